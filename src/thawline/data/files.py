"""Finding image files on disk: class folders and the images below them, with a reason for everything left out.

No torch here: the report and `data shift` use it too."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from thawline.core.errors import ThawlineError
from thawline.core.runformat import RUN_MARKER
from thawline.data.images import IMAGE_EXTENSIONS

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


# The file thawline writes into every run and compare folder it creates: what marks a folder as thawline's (so
# --overwrite may empty it and discovery never reads it as data). Its JSON says the kind and the format version.


def marker_kind(folder: Path | str) -> str | None:
    """'run', 'compare' or 'sweep' when thawline created `folder` (its marker is there and readable), else None."""
    try:
        data = json.loads((Path(folder) / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if kind in ("run", "compare", "sweep") else None


def is_marked(folder: Path | str) -> bool:
    """Whether `folder` is a run or compare folder thawline created (never data)."""
    return marker_kind(folder) is not None


# Characters that must not reach a terminal, a CSV cell or a page as they are: C0/C1 controls (escape sequences
# that move the cursor, set the title, hide text), DEL, and the bidirectional overrides that reorder what is shown.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match) -> str:
    c = m.group()
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(path: str) -> str:
    """`path` (a file, folder or class name) as text safe to print, write to a CSV or put in a page: bytes that are
    not UTF-8 become U+FFFD, control characters and bidi overrides their escapes (ESC -> '\\x1b')."""
    try:
        text = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that no file name's bytes could have made
        text = re.sub("[\ud800-\udfff]", "\ufffd", path)
    return _UNSAFE.sub(_escape, text)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


RUN_FOLDER = "a thawline run folder, not data; ignored"


def class_folders(d: Path, skipped: list[Skipped] | None = None) -> list[str]:
    """Class folder names in d (symbolic links to folders followed); a name that is not valid UTF-8, a broken link,
    a hidden folder and a run or compare folder thawline made are left out (and recorded when `skipped` is given)."""
    try:
        entries = sorted(d.iterdir())
    except OSError as e:
        raise ThawlineError(f"cannot read folder '{d}' ({e.strerror}); make it readable (chmod +rx)") from None
    names = []
    for p in entries:
        if p.is_dir() and not p.name.startswith(".") and p.name not in METADATA_FOLDERS and _utf8(p.name):
            if is_marked(p):  # --out inside --data: its report PNGs must never become a class
                if skipped is not None:
                    skipped.append(Skipped(printable(str(p)), RUN_FOLDER, folder=True))
                continue
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


def _inside(path: str, folder: str) -> bool:
    """Whether real path `path` is `folder` or below it (both real paths)."""
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


class Walker:
    """One discovery's walk over the class folders of a data folder (all its splits): every real file is read once
    overall, under the class folder it physically sits in, so no link can give an image a second label or a second
    split. Inside a class folder a symbolic link that leads out of it is not followed; a class folder that is a link
    into the data folder (or to a folder read as another class) is not read. Each is recorded in `skipped` with why
    (lost: it would have relabelled or leaked images)."""

    def __init__(self, root: Path | str, skipped: list[Skipped]) -> None:
        self.root = os.path.realpath(root)
        self.skipped = skipped
        self._files: dict[tuple[int, int], tuple[str, str]] = {}  # (st_dev, st_ino) -> (class folder's real, path)
        self._classes: dict[str, str] = {}  # real path of each class folder read -> its path as found

    def class_folders(self, d: Path) -> list[str]:
        """`class_folders(d)` less the class folders that are a second way into images read elsewhere."""
        return [name for name in class_folders(d, self.skipped) if self._accept(d / name)]

    def _accept(self, folder: Path) -> bool:
        real = os.path.realpath(folder)
        shown = printable(str(folder))
        if folder.is_symlink() and (_inside(real, self.root) or _inside(self.root, real)):
            self.skipped.append(Skipped(shown, f"class folder is a symbolic link into the data folder (to "
                                        f"'{printable(os.readlink(folder))}'): a second way into images that are "
                                        "read where they sit; ignored", folder=True, lost=True))  # fmt: skip
            return False
        for other_real, other in self._classes.items():
            if _inside(real, other_real) or _inside(other_real, real):
                self.skipped.append(Skipped(shown, f"the same folder as class folder '{printable(other)}' (a "
                                            "symbolic link, or a folder inside it): its images are read once, there; "
                                            "ignored", folder=True, lost=True))  # fmt: skip
                return False
        self._classes[real] = str(folder)
        return True

    def images(self, folder: Path | str) -> Iterator[str]:
        """The image files below class folder `folder` that no earlier class folder of this walk read."""
        return walk_images(folder, self.skipped, seen=self._files, confined=True)


def walk_images(
    d: Path | str,
    skipped: list[Skipped],
    seen: dict[tuple[int, int], tuple[str, str]] | None = None,
    confined: bool = True,
) -> Iterator[str]:
    """Image files below d, sorted, nested and symbolically linked folders included (each real folder and file once,
    also across the calls that share `seen`); every other entry is recorded in `skipped` with the reason.

    `confined` (d is a class folder): a symbolic link whose real path leaves d's is not followed (`ln -s .. loop`
    would label every other class's images as this one), and a run folder thawline made is never read."""
    top = os.path.realpath(d)
    files = {} if seen is None else seen
    folders: set[tuple[int, int]] = set()

    def walk(dirpath: str) -> Iterator[str]:
        try:
            st = os.stat(dirpath)
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(printable(dirpath), f"unreadable folder ({e.strerror})", folder=True, lost=True))
            return
        if (st.st_dev, st.st_ino) in folders:  # a link back to a folder already walked (a loop, or a second way in)
            skipped.append(Skipped(printable(dirpath), "symbolic link to a folder already read; ignored", folder=True))
            return
        folders.add((st.st_dev, st.st_ino))
        subdirs = []
        for e in entries:
            path = os.path.join(dirpath, e.name)
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir and e.name.startswith("."):
                skipped.append(Skipped(printable(path), "hidden folder (name starts with '.'); ignored", folder=True))
                continue
            if e.is_symlink() and confined and os.path.exists(path):
                target = os.path.realpath(path)
                if not _inside(target, top):
                    skipped.append(Skipped(printable(path), f"symbolic link leaves its class folder (to "
                                           f"'{printable(os.readlink(path))}'): its images would carry this folder's "
                                           "label; ignored", folder=is_dir, lost=True))  # fmt: skip
                    continue
            if is_dir:
                if confined and is_marked(path):
                    skipped.append(Skipped(printable(path), RUN_FOLDER, folder=True))
                else:
                    subdirs.append(path)
            elif (image := _file(path, e.name, skipped)) is not None:
                try:
                    fst = os.stat(path)
                except OSError:  # a broken link: decoding says so
                    yield image
                    continue
                key = (fst.st_dev, fst.st_ino)
                if key not in files:
                    files[key] = (top, path)
                    yield image
                elif files[key][0] == top:  # a link to a file of the same class folder: read once
                    skipped.append(Skipped(printable(path), f"the same file as '{printable(files[key][1])}'; "
                                           "read once, there"))  # fmt: skip
                else:  # a hard link (or a link) to a file another class folder reads: a second label
                    skipped.append(Skipped(printable(path), f"the same file as '{printable(files[key][1])}' of "
                                           "another class folder (a link); ignored", lost=True))  # fmt: skip
        for sub in subdirs:
            yield from walk(sub)

    yield from walk(os.fspath(d))


def _file(path: str, name: str, skipped: list[Skipped]) -> str | None:
    """`path` when it is an image file by its name, else None with why in `skipped`."""
    if not _utf8(path):
        skipped.append(Skipped(printable(path), "file or folder name is not valid UTF-8; rename it", lost=True))
    elif name.startswith("._"):
        skipped.append(Skipped(path, "macOS metadata file ('._' prefix), not an image; ignored"))
    elif name.startswith("."):
        skipped.append(Skipped(path, "hidden file (name starts with '.'); ignored"))
    elif Path(name).suffix.lower() in IMAGE_EXTENSIONS:
        return path
    else:
        skipped.append(Skipped(path, _not_image_reason(name)))
    return None


def _not_image_reason(name: str) -> str:
    ext = Path(name).suffix.lower()
    if ext == ".svg":
        return "SVG vector drawing, not used; convert it to PNG (e.g. rsvg-convert) to train on it"
    if ext in (".heic", ".heif"):
        return "HEIC/HEIF photo, not decodable here; convert it to JPEG (e.g. heif-convert) to use it"
    return f"not an image file extension ({ext or 'none'}); ignored"
