"""K stratified folds over train and val pooled (`compare --folds K`), assigned by file content. No torch.

    assign_folds(keys, labels, k)    # each file's fold, 0..k-1, from its content key and class
    pooled(found)                    # the discovered data with train and val pooled as train (test kept apart)
    fold_split(found, folds, i)      # the discovered data of fold i: the others' files as train, its own as val

A file's fold follows from its bytes, never its name or the run: within each class the files are taken in the
order of a hash of their content (`splits._content_key`, the key the held-out splits use) and dealt to the folds in
turn, so every fold holds each class's images to within one, a renamed or moved file keeps its fold, and files with
the same bytes (also in two classes: mislabelled copies) share one fold, so no image is ever validated by a model
that trained on its copy. The pool is the same whatever `--val-split` holds out, and the test split (a folder, or
`--test-split`) is the plain compare's: it is touched once, at the end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from thawline.core.errors import ThawlineError
from thawline.data.discovery import Discovered, SplitFiles

MIN_FOLDS = 2


def assign_folds(keys: Sequence[str], labels: Sequence[int], k: int) -> list[int]:
    """The fold (0..k-1) of each file from its content key (`splits._content_key`, as data.csv records it) and
    class: stratified by class, dealt in key order; files with the same key share the fold of the first dealt."""
    check_k(k)
    by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for i, (key, label) in enumerate(zip(keys, labels, strict=True)):
        by_class[int(label)].append((key, i))
    fold_of: list[int] = [0] * len(keys)
    fold_of_key: dict[str, int] = {}
    for label in sorted(by_class):
        dealt = 0
        for key, i in sorted(by_class[label]):
            if key not in fold_of_key:
                fold_of_key[key] = dealt % k
                dealt += 1
            fold_of[i] = fold_of_key[key]
    return fold_of


def check_k(k: int) -> None:
    if k < MIN_FOLDS:
        raise ThawlineError(f"--folds {k}: must be {MIN_FOLDS} or more (5 is the usual choice)")


def pooled(found: Discovered) -> Discovered:
    """`found` with its train and val files pooled as train (val after train, each in its order) and test kept:
    what the folds are cut from. The val share held out of train is pooled back; a test share stays out."""
    train, val = found.splits["train"], found.splits.get("val")
    pool = SplitFiles("train", list(train.paths) + list(val.paths if val else []),
                      list(train.labels) + list(val.labels if val else []))  # fmt: skip
    splits = {"train": pool, **({"test": found.splits["test"]} if "test" in found.splits else {})}
    held_out = {s: share for s, share in found.held_out.items() if s != "val"}
    return replace(found, splits=splits, held_out=held_out)


def fold_split(found: Discovered, folds: Sequence[int], i: int) -> Discovered:
    """Fold `i` of the pooled data `found` (`pooled`): every other fold's files as train, fold i's as val, test
    kept; its data.csv fingerprint tells the folds' runs apart."""
    pool = found.splits["train"]
    take = [[j for j, f in enumerate(folds) if (f == i) == own] for own in (False, True)]
    train, val = (SplitFiles(name, [pool.paths[j] for j in js], [pool.labels[j] for j in js])
                  for name, js in zip(("train", "val"), take, strict=True))  # fmt: skip
    splits = {"train": train, "val": val, **({"test": found.splits["test"]} if "test" in found.splits else {})}
    return replace(found, splits=splits)


def check_folds(found: Discovered, k: int) -> None:
    """Every class needs an image in each fold's val and train: refused in one line naming the smallest class."""
    pool = found.splits["train"]
    counts: dict[int, int] = defaultdict(int)
    for label in pool.labels:
        counts[int(label)] += 1
    small = min(counts, key=lambda c: (counts[c], c)) if counts else None
    if small is not None and counts[small] < k:
        raise ThawlineError(
            f"--folds {k}: class '{found.classes[small]}' has {counts[small]} image(s) in train and val together, "
            f"fewer than the {k} folds; pass --folds {max(MIN_FOLDS, counts[small])} or add images"
        )
