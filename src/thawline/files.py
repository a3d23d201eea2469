"""Finding image files on disk: class folders and the images below them, with a reason for everything left out.

No torch here: the report and `data shift` use it too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from thawline.errors import ThawlineError
from thawline.images import IMAGE_EXTENSIONS

SPLITS = ("train", "val", "test")
# Folders that archivers and tools add beside the data: never a class.
METADATA_FOLDERS = {
    "__MACOSX": "macOS archive metadata folder (a zip made on a Mac), not a class; ignored",
    "@eaDir": "Synology thumbnail folder, not a class; ignored",
}


@dataclass
class Skipped:
    path: str
    reason: str
    folder: bool = False  # a whole folder left out, not one file
    lost: bool = False  # images left out that the user meant to use (a bad name, an unreadable folder, a broken link)


def printable(path: str) -> str:
    """`path` as printable UTF-8 text (bytes that are not UTF-8 become U+FFFD)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def class_folders(d: Path, skipped: list[Skipped] | None = None) -> list[str]:
    """Class folder names in d (symbolic links to folders followed); a name that is not valid UTF-8, a broken link and
    a hidden folder are left out (and recorded when `skipped` is given)."""
    try:
        entries = sorted(d.iterdir())
    except OSError as e:
        raise ThawlineError(f"cannot read folder '{d}' ({e.strerror}); make it readable (chmod +rx)") from None
    names = []
    for p in entries:
        if p.is_dir() and not p.name.startswith(".") and p.name not in METADATA_FOLDERS and _utf8(p.name):
            names.append(p.name)
        elif skipped is None:
            continue
        elif p.is_dir() and p.name in METADATA_FOLDERS:
            skipped.append(Skipped(printable(str(p)), METADATA_FOLDERS[p.name], folder=True))
        elif p.is_dir() and p.name.startswith("."):
            skipped.append(Skipped(printable(str(p)), "hidden folder (name starts with '.'); ignored", folder=True))
        elif p.is_dir():
            skipped.append(
                Skipped(printable(str(p)), "class folder name is not valid UTF-8; rename it", folder=True, lost=True)
            )
        elif p.is_symlink() and not p.exists():
            skipped.append(
                Skipped(printable(str(p)), "broken symbolic link (its target is missing); fix or remove it", lost=True)
            )
    return names


def walk_images(d: Path | str, skipped: list[Skipped]) -> Iterator[str]:
    """Image files below d, sorted, nested and symbolically linked folders included (each real folder once); every
    other entry is recorded in `skipped` with the reason."""

    def unreadable(e: OSError) -> None:
        skipped.append(Skipped(printable(str(e.filename)), f"unreadable folder ({e.strerror})", folder=True, lost=True))

    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(d, onerror=unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a folder already walked (a loop, or a second way in)
            skipped.append(Skipped(printable(dirpath), "symbolic link to a folder already read; ignored", folder=True))
            dirnames[:] = []
            continue
        seen.add(real)
        for name in sorted(n for n in dirnames if n.startswith(".")):
            hidden = os.path.join(dirpath, name)
            skipped.append(Skipped(printable(hidden), "hidden folder (name starts with '.'); ignored", folder=True))
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not _utf8(path):
                skipped.append(Skipped(printable(path), "file or folder name is not valid UTF-8; rename it", lost=True))
            elif name.startswith("._"):
                skipped.append(Skipped(path, "macOS metadata file ('._' prefix), not an image; ignored"))
            elif name.startswith("."):
                skipped.append(Skipped(path, "hidden file (name starts with '.'); ignored"))
            elif Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield path
            else:
                skipped.append(Skipped(path, _not_image_reason(name)))


def _not_image_reason(name: str) -> str:
    ext = Path(name).suffix.lower()
    if ext == ".svg":
        return "SVG vector drawing, not used; convert it to PNG (e.g. rsvg-convert) to train on it"
    if ext in (".heic", ".heif"):
        return "HEIC/HEIF photo, not decodable here; convert it to JPEG (e.g. heif-convert) to use it"
    return f"not an image file extension ({ext or 'none'}); ignored"
