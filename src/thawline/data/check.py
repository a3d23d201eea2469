"""`thawline data check DIR`: what in an ImageFolder tree needs fixing before training.

`scan` decodes every file once (with the same safe decoder training uses) and reports images per class and split,
class imbalance, unreadable and odd files with the reason, sizes and modes, exact duplicates (sha1 of the file
bytes) within a split and across splits, near copies across splits, classes missing from a split and empty class
folders. The copies across splits are found in leakage; check_format prints the result.
"""

from __future__ import annotations

import hashlib
import io
import os
import statistics
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from thawline.core.errors import ThawlineError
from thawline.data.files import SPLITS, Skipped, Walker, printable
from thawline.data.images import BadImage, open_rgb, upright_size
from thawline.data.leakage import NEAR_RMS, THUMB, near_copies
from thawline.data.splits import Layout, held_out_shares, hold_out, training_layout

IMBALANCE_WARN = 10.0  # largest / smallest class above this is worth a warning
_CHUNK = 64


@dataclass
class BadFile:
    split: str
    path: str  # relative to the checked folder
    reason: str


@dataclass
class DuplicateGroup:
    sha1: str
    files: list[tuple[str, str, str]]  # (split, class, path relative to the checked folder)

    @property
    def splits(self) -> list[str]:
        return sorted({s for s, _, _ in self.files}, key=SPLITS.index)

    @property
    def classes(self) -> list[str]:
        return sorted({c for _, c, _ in self.files})


@dataclass
class CheckResult:
    root: str
    splits: list[str]  # split folders present, in train/val/test order
    classes: list[str]  # every class folder name seen in any split (train's first)
    counts: dict[str, dict[str, int]]  # split -> class -> decodable images
    bad_files: list[BadFile] = field(default_factory=list)  # files training cannot use (problem)
    ignored_files: list[BadFile] = field(default_factory=list)  # non-image files, files outside class folders
    empty_classes: list[tuple[str, str]] = field(default_factory=list)  # (split, class) with no decodable image
    missing: dict[str, list[str]] = field(default_factory=dict)  # split -> train classes with no image there
    not_in_train: dict[str, list[str]] = field(default_factory=dict)  # split -> classes with images, none in train
    imbalance: dict[str, float] = field(default_factory=dict)  # split -> largest / smallest non-empty class
    sizes: dict[str, list[int]] = field(default_factory=dict)  # width/height -> [min, median, max] (upright)
    modes: dict[str, int] = field(default_factory=dict)  # PIL mode as stored -> files
    duplicates: list[DuplicateGroup] = field(default_factory=list)  # identical bytes, all in one split
    leakage: list[DuplicateGroup] = field(default_factory=list)  # identical bytes in more than one split
    # (earlier split's file, later split's file, RMS of their thumbnails): other bytes, the same picture
    near_copies: list[tuple[str, str, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # need fixing: exit code 1
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def leaked_files(self) -> int:
        """Files in a later split (val, test) whose bytes also occur in an earlier one."""
        return sum(sum(1 for s, _, _ in g.files if s != g.splits[0]) for g in self.leakage)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("duplicates", "leakage"):
            d[key] = [
                {"sha1": g.sha1, "splits": g.splits, "classes": g.classes, "files": [list(f) for f in g.files]}
                for g in getattr(self, key)
            ]
        d["empty_classes"] = [list(e) for e in self.empty_classes]
        d["ok"] = self.ok
        d["images"] = {s: sum(c.values()) for s, c in self.counts.items()}
        return d


# ---------------------------------------------------------------------------------------------- full scan


Inspected = tuple[str | None, str | None, tuple[int, int] | None, str | None, bytes | None]


def _inspect(path: str) -> Inspected:
    """(sha1 of the bytes, reason it is unusable or None, upright (w, h), mode as stored, THUMB x THUMB gray
    thumbnail)."""
    try:
        # every byte is decoded (a truncated file fails); a large JPEG at 1/8 scale, never below twice the thumbnail
        img = open_rgb(path, at_least=2 * THUMB)
    except BadImage as e:
        return None, e.reason, None, None, None
    thumb = img.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX).tobytes()
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            mode, size = img.mode, upright_size(img)
    except Exception as e:  # decoded a moment ago; only a file changing under us gets here
        return None, f"cannot read ({e}); check the file", None, None, None
    return hashlib.sha1(data).hexdigest(), None, size, mode, thumb


def _inspect_chunk(paths: list[str]) -> list[Inspected]:
    return [_inspect(p) for p in paths]


def scan(
    root: str | os.PathLike,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> CheckResult:
    """Decode every file of an ImageFolder tree once and collect what needs fixing (see CheckResult)."""
    root = Path(root)
    if not root.exists():
        raise ThawlineError(f"data folder '{root}' not found; pass a folder holding train/<class>/ or <class>/")
    if not root.is_dir():
        raise ThawlineError(f"'{root}' is a file; pass the folder holding train/ and val/")
    layout = training_layout(root)
    splits = [s for s in SPLITS if s in layout.dirs or s == "train"]
    warnings = _stray_folders(layout)
    shares = held_out_shares(layout, None, None)  # as training divides train without options: val's default share
    if "val" in shares:
        warnings.append(
            f"no val/ folder: train and compare hold out {shares['val']:.0%} of each class{layout.of_train} as val "
            "(by file content, the same files every run; --val-split)"
        )

    def rel(path: str) -> str:
        return printable(os.path.relpath(path, root))

    files, class_dirs, ignored, unusable = _list_files(layout, splits, rel)
    results = _run_inspect([p for _, _, p in files], workers, progress)

    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(class_dirs[s], 0) for s in splits}
    bad: list[BadFile] = unusable
    widths: list[int] = []
    heights: list[int] = []
    modes: dict[str, int] = defaultdict(int)
    by_hash: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    thumbs: dict[str, list[tuple[str, str, bytes]]] = defaultdict(list)
    for (split, cls, path), (digest, reason, size, mode, thumb) in zip(files, results, strict=True):
        if reason is not None:
            bad.append(BadFile(split, rel(path), reason))
            continue
        counts[split][cls] += 1
        widths.append(size[0])
        heights.append(size[1])
        modes[mode] += 1
        by_hash[digest].append((split, cls, rel(path)))
        thumbs[split].append((rel(path), digest, thumb))

    bad.sort(key=lambda b: (SPLITS.index(b.split), b.path))
    result = CheckResult(str(root), splits, [], counts, bad, ignored)
    train_classes = [c for c, n in counts["train"].items() if n > 0]
    result.classes = list(counts["train"]) + sorted({c for s in splits for c in counts[s]} - set(counts["train"]))
    result.modes = dict(sorted(modes.items(), key=lambda kv: -kv[1]))
    if widths:
        result.sizes = {
            "width": [min(widths), int(statistics.median(widths)), max(widths)],
            "height": [min(heights), int(statistics.median(heights)), max(heights)],
        }
    for split in splits:
        result.empty_classes.extend((split, c) for c, n in counts[split].items() if n == 0)
        present = [n for n in counts[split].values() if n > 0]
        if present:
            result.imbalance[split] = round(max(present) / min(present), 2)
        if split != "train":
            missing = [c for c in train_classes if counts[split].get(c, 0) == 0]
            extra = [c for c, n in counts[split].items() if n > 0 and c not in train_classes]
            if missing:
                result.missing[split] = missing
            if extra:
                result.not_in_train[split] = extra
    result.leakage, result.duplicates = _byte_copies(by_hash)
    result.near_copies = near_copies(_as_training_splits(thumbs, files, shares, rel))

    result.problems = _problems(result, root, train_classes)
    result.warnings = warnings + _warnings(result, train_classes, ignored)
    return result


def _as_training_splits(
    thumbs: dict[str, list[tuple[str, str, bytes]]],
    files: list[tuple[str, str, str]],
    shares: dict[str, float],
    rel: Callable[[str], str],
) -> dict[str, list[tuple[str, str, bytes]]]:
    """The thumbnails by the split training puts each image in: train's divided as training holds `shares` out of
    it, so a near copy that would land in a held-out split is found too."""
    if not shares:
        return thumbs
    train = [(cls, path) for split, cls, path in files if split == "train"]
    classes = sorted({cls for cls, _ in train})
    parts = hold_out([p for _, p in train], [classes.index(c) for c, _ in train], shares)
    where = {rel(p): split for split, (paths, _) in parts.items() for p in paths}
    out = {s: entries for s, entries in thumbs.items() if s != "train"}
    for entry in thumbs.get("train", []):
        out.setdefault(where[entry[0]], []).append(entry)
    return out


def _stray_folders(layout: Layout) -> list[str]:
    """A warning for each folder beside the split folders that is not read (a run folder thawline made is quietly
    left out; none when root holds the classes): the same list training warns about."""
    return layout.stray_warnings


def _byte_copies(
    by_hash: dict[str, list[tuple[str, str, str]]],
) -> tuple[list[DuplicateGroup], list[DuplicateGroup]]:
    """(leakage, duplicates): files with the same bytes across splits, and within one split."""
    leakage: list[DuplicateGroup] = []
    duplicates: list[DuplicateGroup] = []
    for digest, files in by_hash.items():
        if len(files) > 1:
            group = DuplicateGroup(digest, sorted(files, key=lambda t: (SPLITS.index(t[0]), t[2])))
            (leakage if len(group.splits) > 1 else duplicates).append(group)
    return sorted(leakage, key=lambda g: g.files[0][2]), sorted(duplicates, key=lambda g: g.files[0][2])


def _list_files(
    layout: Layout, splits: list[str], rel: Callable[[str], str]
) -> tuple[list[tuple[str, str, str]], dict[str, list[str]], list[BadFile], list[BadFile]]:
    """(split, class, path) of every image file, the class folders per split, what is ignored, what is unusable."""
    files: list[tuple[str, str, str]] = []  # (split, class, absolute path)
    ignored: list[BadFile] = []
    unusable: list[BadFile] = []
    class_dirs: dict[str, list[str]] = {}
    walker = Walker(layout.root, [])  # what training walks: each real file once, under its own class folder
    for split in splits:
        d = layout.split_dir(split)
        skipped: list[Skipped] = []
        walker.skipped = skipped  # each split's own list; the files read are shared
        class_dirs[split] = walker.class_folders(d)
        for cls in class_dirs[split]:
            files.extend((split, cls, p) for p in walker.images(d / cls))
        for f in sorted(d.iterdir()):
            if f.is_file():
                skipped.append(Skipped(str(f), f"file directly in {d.name}/, not in a class folder; ignored"))
        for s in skipped:  # a name training cannot handle, a folder it cannot read, a link that relabels: a problem
            (unusable if s.lost else ignored).append(BadFile(split, rel(s.path), s.reason))
    # beside the split folders: a run folder is listed as ignored, a stray folder is warned about (`_stray_folders`)
    ignored.extend(BadFile("", rel(s.path), s.reason) for s in layout.skipped if not s.lost)

    return files, class_dirs, ignored, unusable


def _problems(result: CheckResult, root: Path, train_classes: list[str]) -> list[str]:
    """What needs fixing before training (`thawline data check` exits 1)."""
    problems: list[str] = []
    if len(train_classes) < 2:
        problems.append(f"train/ has {len(train_classes)} class(es) with images; a classifier needs at least 2")
    if result.bad_files:
        n = len(result.bad_files)
        problems.append(f"{n} file(s) cannot be used; fix or remove them (listed under 'bad files')")
    if result.leakage:
        problems.append(
            f"LEAKAGE: {result.leaked_files} file(s) in val/test are byte-identical to files in an earlier split; "
            "remove the copies or accuracy on them is inflated"
        )
    conflicting = [g for g in result.duplicates + result.leakage if len(g.classes) > 1]
    if conflicting:
        problems.append(
            f"LABELS: {len(conflicting)} identical image(s) carry different class labels (listed under 'duplicates "
            "within a split' and leakage); keep each image under its one right class"
        )
    for split, extra in result.not_in_train.items():
        problems.append(f"class(es) {_names(extra)} have images in {split}/ but none in train/; add training images")
    if result.empty_classes:
        shown = ", ".join(f"{s}/{c}" for s, c in result.empty_classes[:5])
        more = f" and {len(result.empty_classes) - 5} more" if len(result.empty_classes) > 5 else ""
        problems.append(f"class folder(s) with no usable image: {shown}{more}; add images or remove the folder")
    return problems


def _warnings(result: CheckResult, train_classes: list[str], ignored: list[BadFile]) -> list[str]:
    """What is worth knowing but does not stop training."""
    warnings: list[str] = []
    for split, missing in result.missing.items():
        warnings.append(f"{split}/ has no images of class(es) {_names(missing)}; its accuracy leaves them out")
    ratio = result.imbalance.get("train")
    if ratio is not None and ratio > IMBALANCE_WARN:
        n = result.counts["train"]
        big = max(train_classes, key=n.__getitem__)
        small = min(train_classes, key=n.__getitem__)
        warnings.append(
            f"train/ classes are imbalanced {ratio:g}x ('{big}' {n[big]} images, '{small}' {n[small]}); "
            "consider more images of the small classes, or read per-class recall in the report"
        )
    if result.duplicates:
        extra_copies = sum(len(g.files) - 1 for g in result.duplicates)
        warnings.append(f"{extra_copies} duplicate file(s) within a split (same bytes as another file there)")
    if result.near_copies:
        later = len({b for _, b, _ in result.near_copies})
        warnings.append(
            f"{later} image(s) in val/test look like resized or re-encoded copies of images in an earlier split "
            f"(their {THUMB}x{THUMB} thumbnails differ by <= {NEAR_RMS:g} levels); check the pairs listed under "
            "'near copies': accuracy on copies is inflated"
        )
    if ignored:
        warnings.append(f"{len(ignored)} file(s) or folder(s) are not images in class folders and are ignored")
    return warnings


def _names(classes: list[str]) -> str:
    shown = ", ".join(f"'{c}'" for c in classes[:5])
    return shown + (f" and {len(classes) - 5} more" if len(classes) > 5 else "")


def _run_inspect(paths: list[str], workers: int | None, progress: Callable[[int], None] | None) -> list:
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    out: list = []
    if n_workers == 1 or len(paths) < 4 * _CHUNK:
        for chunk in chunks:
            out.extend(_inspect_chunk(chunk))
            if progress:
                progress(len(chunk))
        return out
    with ProcessPoolExecutor(n_workers) as pool:
        for rows in pool.map(_inspect_chunk, chunks):
            out.extend(rows)
            if progress:
                progress(len(rows))
    return out
