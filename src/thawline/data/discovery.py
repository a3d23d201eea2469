"""ImageFolder-style discovery: train/val/test and the classes from train, the files of each split. No torch."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from thawline.core.errors import ThawlineError
from thawline.data.files import SPLITS, Skipped, Walker, printable, walk_images
from thawline.data.splits import Layout, held_out_shares, hold_out, training_layout, unused_shares


@dataclass
class SplitFiles:
    name: str
    paths: list[str]
    labels: list[int]


@dataclass
class Discovered:
    layout: Layout  # where the splits' folders are
    classes: list[str]
    splits: dict[str, SplitFiles]
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    held_out: dict[str, float] = field(default_factory=dict)  # splits held out of train, and their shares

    @property
    def root(self) -> Path:
        return self.layout.root

    def split_dir(self, split: str) -> Path:
        """The folder a split's images come from (train's for a split held out of it)."""
        return self.layout.split_dir(split)

    def held_out_line(self) -> str | None:
        """'val 20% of each class held out of train/, by file content (--val-split)', or None when every split has
        its folder."""
        if not self.held_out:
            return None
        parts = " and ".join(f"{s} {share:.0%}" for s, share in self.held_out.items())
        flags = ", ".join(f"--{s}-split" for s in self.held_out)
        return f"{parts} of each class held out{self.layout.of_train}, by file content ({flags})"


def discover(
    root: str | os.PathLike,
    max_per_class: int | None = None,
    val_split: float | None = None,
    test_split: float | None = None,
) -> Discovered:
    """Find the images of root/{train,val[,test]}/<class>/** (splits under their usual names, see `splits.py`),
    holding val (and test, with `test_split`) out of train when it has no folder; root/<class>/** alone is all
    train. Classes come from train; nothing is dropped silently."""
    root = Path(root)
    if not root.exists():
        raise ThawlineError(
            f"data folder '{root}' not found; pass --data DIR with DIR/train/<class>/ (val/, test/ optional) or "
            "DIR/<class>/ (or run `thawline data prepare fashion-mnist --out DIR`)"
        )
    if not root.is_dir():
        raise ThawlineError(f"--data '{root}' is a file; pass the folder holding train/ and val/")
    layout = training_layout(root)
    shares = held_out_shares(layout, val_split, test_split)
    skipped: list[Skipped] = list(layout.skipped)
    warnings = unused_shares(layout, val_split, test_split) + layout.stray_warnings
    walker = Walker(root, skipped)  # one walk for every split: each real file read once, under its own class
    train_files = _train_classes(layout, walker, warnings)
    classes = list(train_files)
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, SplitFiles] = {}
    for split in SPLITS:
        if split in layout.dirs or (split == "train" and layout.flat):
            paths, labels = _split_files(layout, split, index, walker, warnings, train_files)
            splits[split] = SplitFiles(split, paths, labels)
    _warn_links(skipped, warnings)
    if shares:
        parts = hold_out(splits["train"].paths, splits["train"].labels, shares)
        splits.update({s: SplitFiles(s, *parts[s]) for s in parts})
        for split in shares:
            _warn_missing(split, classes, splits[split].labels, warnings)
    if max_per_class is not None:
        kept = [i for i, n in enumerate(_running_counts(splits["train"].labels)) if n < max_per_class]
        train = splits["train"]
        splits["train"] = SplitFiles("train", [train.paths[i] for i in kept], [train.labels[i] for i in kept])
    splits = {s: splits[s] for s in SPLITS if s in splits}
    return Discovered(layout, classes, splits, skipped, warnings, shares)


def _train_classes(layout: Layout, walker: Walker, warnings: list[str]) -> dict[str, list[str]]:
    """The class folders of train that hold images (at least 2) and their files; the others are warned about and
    listed."""
    train_dir = layout.train_dir
    skipped = walker.skipped
    before = len(skipped)
    train_classes = walker.class_folders(train_dir)
    warnings.extend(
        f"class folder '{s.path}' is left out: {s.reason}" for s in skipped[before:] if s.folder and s.lost
    )  # a whole class lost, not a file
    classes: dict[str, list[str]] = {}
    for name in train_classes:
        mark = len(skipped)
        files = sorted(walker.images(train_dir / name))
        if files:
            classes[name] = files
        else:
            warnings.append(f"class '{name}' in {train_dir} has no images and is left out")
            unreadable = [e.reason for e in skipped[mark:] if e.reason.startswith("unreadable")]
            why = f"{unreadable[0]}; make it readable (chmod +rx)" if unreadable else "class folder with no images"
            skipped.append(Skipped(str(train_dir / name), why, folder=True))
    if len(classes) < 2:
        hint = ""
        if layout.flat:
            hint = f" (a folder with no train/ is read as class folders: {layout.root}/<class name>/<images>)"
        raise ThawlineError(f"'{train_dir}' has {len(classes)} class folder(s) with images; a classifier needs at "
                            f"least 2{hint}")  # fmt: skip
    return classes


def _split_files(
    layout: Layout,
    split: str,
    index: dict[str, int],
    walker: Walker,
    warnings: list[str],
    train_files: dict[str, list[str]],
) -> tuple[list[str], list[int]]:
    """(paths, labels) of one split folder; a class that train lacks is refused, files outside class folders listed."""
    d = layout.split_dir(split)
    skipped = walker.skipped
    paths: list[str] = []
    labels: list[int] = []
    names = list(train_files) if split == "train" else walker.class_folders(d)
    for name in names:
        if name not in index:
            if not any(True for _ in walk_images(d / name, [])):
                skipped.append(Skipped(str(d / name), "class folder with no images", folder=True))
                continue
            raise ThawlineError(
                f"class '{name}' is in {d} but not in {layout.train_dir}; add training images for it "
                "or remove/rename the folder"
            )
        files = train_files[name] if split == "train" else sorted(walker.images(d / name))
        if not files:
            skipped.append(Skipped(str(d / name), "class folder with no images", folder=True))
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    for f in sorted(d.iterdir()):
        if f.is_file():
            skipped.append(Skipped(printable(str(f)), f"file directly in {d.name}/ (not in a class folder)"))
    if split != "train":
        _warn_missing(split, list(index), labels, warnings)
    if not paths:
        raise ThawlineError(f"'{d}' holds no images in class folders; add images under {d}/<class name>/")
    return paths, labels


# the reasons `Walker` gives for a link it did not follow because it would give images a second label or split
_RELABEL = ("leaves its class folder", "link into the data folder", "the same folder as class", "of another class")


def _warn_links(skipped: list[Skipped], warnings: list[str]) -> None:
    """One line when links were not followed because they would have given images a second label or split."""
    links = [
        s
        for s in skipped
        if s.lost
        and any(f in s.reason for f in _RELABEL)
        and not any(f"'{s.path}'" in w for w in warnings)  # a train class folder is warned about already
    ]
    if links:
        more = f" and {len(links) - 1} more" if len(links) > 1 else ""
        warnings.append(f"'{links[0].path}'{more} not read: {links[0].reason} (all listed with why in skipped.csv)")


def _warn_missing(split: str, classes: list[str], labels: list[int], warnings: list[str]) -> None:
    present = set(labels)
    missing = [c for i, c in enumerate(classes) if i not in present]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        warnings.append(f"{split}/ has no images of class(es) {', '.join(missing[:5])}{more}")


def _running_counts(labels: list[int]) -> list[int]:
    """For each position, how many earlier entries share its label (the cap keeps a class's first files)."""
    seen: dict[int, int] = defaultdict(int)
    out = []
    for label in labels:
        out.append(seen[label])
        seen[label] += 1
    return out
