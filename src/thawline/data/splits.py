"""Where a data folder's train, val and test images come from: split folders under their usual names, or a share of
each class held out of train when a split has no folder (a folder of class folders alone is all train).

No torch here: `data check` and `data shift` use it too."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from thawline.core.errors import ThawlineError
from thawline.data.files import METADATA_FOLDERS, RUN_FOLDER, SPLITS, Skipped, is_marked, printable
from thawline.data.images import IMAGE_EXTENSIONS

# Exports name the splits differently (Roboflow: valid/, Keras examples: validation/); each is accepted as is.
SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
DEFAULT_VAL_SPLIT = 0.2  # fastai's valid_pct default, Keras examples' validation_split
SAMPLE = 16 << 10  # bytes read from each end of a file for its place in a held-out split


@dataclass
class Layout:
    """The folders of a data tree: `dirs[split]` for each split that has one (under any of its names), `train_dir`
    where the training classes are (root itself for a folder of class folders: `flat`)."""

    root: Path
    dirs: dict[str, Path] = field(default_factory=dict)
    flat: bool = False
    folders: list[Path] = field(default_factory=list)  # every visible sub-folder of root (run folders left out)
    # folders beside the split folders, not read: a run folder thawline made (quietly), any other (lost: a class
    # put beside train/ instead of in it)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def stray_warnings(self) -> list[str]:
        """One line for each folder beside the split folders whose images are not read."""
        return [f"folder '{s.path}' is left out: {s.reason}" for s in self.skipped if s.lost]

    @property
    def train_dir(self) -> Path:
        return self.dirs.get("train", self.root)

    def split_dir(self, split: str) -> Path:
        """The folder a split's images are read from: its own, or train's when it is held out of train."""
        return self.dirs.get(split, self.train_dir)

    @property
    def of_train(self) -> str:
        """' of train/' (the train folder's own name), or '' for class folders alone: where a share is held out of."""
        return "" if self.flat else f" of {self.train_dir.name}/"


def find_layout(root: Path) -> Layout:
    """The split folders of `root` under any of their names; two folders for one split are refused. With no split
    folder at all, root's sub-folders are the classes and everything is train (`flat`); so too when every folder
    named like a split holds images and no sub-folder (a class called "train" among others)."""
    try:
        with os.scandir(root) as entries:  # the entry's type from the listing: no stat per file of a class folder
            names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        folders = [root / n for n in names if n not in METADATA_FOLDERS]
    except OSError as e:
        raise ThawlineError(f"cannot read folder '{root}' ({e.strerror}); make it readable (chmod +rx)") from None
    runs = [p for p in folders if is_marked(p)]  # --out inside --data: never data, never a split
    folders = [p for p in folders if p not in runs]
    named = [p for p in folders if any(p.name.lower() in aliases for aliases in SPLIT_NAMES.values())]
    if named and all(_images_only(p) for p in named):  # class folders, one of them named like a split ("train")
        return Layout(root, {}, flat=True, folders=folders)
    dirs: dict[str, Path] = {}
    for split, aliases in SPLIT_NAMES.items():
        found = [p for p in named if p.name.lower() in aliases]  # Train/ and train/ both: two folders
        if len(found) > 1:
            both = " and ".join(f"'{printable(p.name)}/'" for p in found)
            raise ThawlineError(f"data folder '{root}' has {both}, two {split} folders; merge them into one")
        if found:
            dirs[split] = found[0]
    if not dirs:  # class folders alone: class discovery lists the run folders
        return Layout(root, dirs, flat=True, folders=folders)
    skipped = [Skipped(printable(str(p)), RUN_FOLDER, folder=True) for p in runs]
    skipped += [
        Skipped(printable(str(p)), "folder beside the split folders is not read; move it into "
                f"{dirs.get('train', root / 'train').name}/ as a class, or out of the data folder", folder=True,
                lost=True)
        for p in folders if p not in dirs.values()
    ]  # fmt: skip
    return Layout(root, dirs, flat=False, folders=folders, skipped=sorted(skipped, key=lambda s: s.path))


def _images_only(folder: Path) -> bool:
    """`folder` holds image files and no visible sub-folder: a class folder, whatever its name."""
    try:
        with os.scandir(folder) as entries:
            kinds = [(e.is_dir(), e.name) for e in entries if not e.name.startswith(".")]
    except OSError:
        return False
    has_images = any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for is_dir, name in kinds if not is_dir)
    return has_images and not any(is_dir for is_dir, _ in kinds)


def nested_data_folder(layout: Layout) -> Path | None:
    """The first sub-folder of a folder of class folders that holds a train/ folder itself (an archive unpacked
    into a folder of its own: data/dataset/train/...), else None."""
    for folder in layout.folders if layout.flat else []:
        try:
            if "train" in find_layout(folder).dirs:
                return folder
        except (OSError, ThawlineError):
            continue
    return None


def training_layout(root: Path) -> Layout:
    """`find_layout`, refused when split folders are there but train is not (training reads its classes there)."""
    layout = find_layout(root)
    inner = nested_data_folder(layout)
    if inner is not None:  # its train/ would be read as one class
        raise ThawlineError(f"data folder '{root}' has no train/ folder but '{inner}' has; pass --data {inner}")
    if layout.dirs and "train" not in layout.dirs:
        others = ", ".join(f"{p.name}/" for p in layout.dirs.values())
        raise ThawlineError(
            f"data folder '{root}' has {others} but no train/ folder; add {root}/train/<class name>/<images> "
            "(or pass a folder of class folders alone: a share of it is held out as val)"
        )
    return layout


def held_out_shares(layout: Layout, val_split: float | None, test_split: float | None) -> dict[str, float]:
    """The splits to hold out of train and their shares: val when it has no folder (DEFAULT_VAL_SPLIT unless given;
    refused when given as 0), test when it has no folder and `test_split` > 0."""
    shares: dict[str, float] = {}
    if "val" not in layout.dirs:
        if val_split is not None and val_split <= 0:
            raise ThawlineError(
                f"data folder '{layout.root}' has no val/ folder and --val-split is 0; add "
                f"{layout.root}/val/<class name>/<images> or pass --val-split 0.2"
            )
        shares["val"] = DEFAULT_VAL_SPLIT if val_split is None else val_split
    if "test" not in layout.dirs and test_split:
        shares["test"] = test_split
    return shares


def unused_shares(layout: Layout, val_split: float | None, test_split: float | None) -> list[str]:
    """A warning for each share given for a split that has its own folder (the folder is used)."""
    given = {"val": val_split, "test": test_split}
    return [
        f"--{split}-split {share} is not used: {layout.dirs[split]} is the {split} split"
        for split, share in given.items()
        if share and split in layout.dirs
    ]


def hold_out(
    paths: Sequence[str], labels: Sequence[int], shares: dict[str, float]
) -> dict[str, tuple[list[str], list[int]]]:
    """Split train's (paths, labels) into train and the held-out `shares` ({'val': 0.2}), class by class: each class
    gives round(share x its images) to each held-out split, at least one while train keeps one. Files are taken in
    the order of a hash of their content (`_content_key`), so the split is the same on every run and machine (no
    seed: a compare's seeds vary the training, never the data), files with the same bytes stay in one split, also
    across classes (no leakage made here), renaming or moving files changes nothing, and a larger share holds out
    a superset."""
    by_class: dict[int, list[tuple[bytes, int]]] = defaultdict(list)
    for i, (path, label) in enumerate(zip(paths, labels, strict=True)):
        by_class[label].append((_content_key(path), i))
    split_of: dict[int, str] = {}
    split_of_key: dict[bytes, str] = {}  # the same bytes in another class too (mislabelled copies): the same split
    for label in sorted(by_class):
        files = sorted(by_class[label])
        wanted = _held_out_counts(len(files), shares)
        taken = dict.fromkeys(wanted, 0)
        for key, i in files:
            if key not in split_of_key:
                split_of_key[key] = next((s for s in wanted if taken[s] < wanted[s]), "train")
            split = split_of_key[key]
            taken[split] = taken.get(split, 0) + 1
            split_of[i] = split
    out: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in ("train", *shares)}
    for i, (path, label) in enumerate(zip(paths, labels, strict=True)):  # each split in the order train was read
        out[split_of[i]][0].append(path)
        out[split_of[i]][1].append(label)
    return out


def _held_out_counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Images of a class with `n` images for each held-out split: round(share x n), at least 1, while train keeps
    at least one (a class of one image stays in train)."""
    counts = {s: max(1, round(share * n)) for s, share in sorted(shares.items(), key=lambda kv: SPLITS.index(kv[0]))}
    for s in reversed(list(counts)):  # trim test first, then val, until train keeps an image
        while counts[s] > 0 and sum(counts.values()) > n - 1:
            counts[s] -= 1
    return counts


def _content_key(path: str) -> bytes:
    """A hash of the file's size and its first and last SAMPLE bytes (all of a small file): equal for byte-identical
    files, so they stay together, and read at a fraction of a large photo's bytes on every run."""
    h = hashlib.blake2b(digest_size=16)
    try:
        # O_NONBLOCK: a named pipe in the folder must not block (decoding reports it as not a regular file)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            size = os.fstat(fd).st_size
            h.update(size.to_bytes(8, "little"))
            h.update(os.pread(fd, SAMPLE, 0))
            if size > SAMPLE:
                h.update(os.pread(fd, SAMPLE, max(SAMPLE, size - SAMPLE)))
        finally:
            os.close(fd)
    except OSError:  # unreadable: placed by its name (decoding reports it)
        return b"\xff" + path.encode("utf-8", "surrogateescape")
    return h.digest()
