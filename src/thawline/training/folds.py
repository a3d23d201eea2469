"""The data of a cross-validated comparison (`compare --folds K`): train and val pooled and decoded once, cut into K
folds (`data/folds.py`); fold i's `PreparedData` trains on the other folds and validates on its own, every fold
sharing the pool's decoded rows (and so its feature caches' keys per subset)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from thawline.core.config import TrainConfig
from thawline.data import fingerprint
from thawline.data.folds import assign_folds, check_folds, fold_split
from thawline.training.prepare import PreparedData, SplitData, prepare_data


@dataclass
class FoldedData:
    """The pool (`pool.splits`: train = train and val pooled, test when there is one), each discovered pool file's
    fold (`folds`, in the pool's discovered order) and the K folds' data."""

    pool: PreparedData
    folds: list[int]
    k: int
    _made: dict[int, PreparedData] = field(default_factory=dict, repr=False)

    def fold(self, i: int) -> PreparedData:
        """Fold i: train on the other folds' decoded images, validate on fold i's; test as it is."""
        if i not in self._made:
            self._made[i] = self._cut(i)
        return self._made[i]

    def _cut(self, i: int) -> PreparedData:
        found = fold_split(self.pool.discovered, self.folds, i)
        pool = self.pool.splits["train"]
        fold_of = dict(zip(self.pool.discovered.splits["train"].paths, self.folds, strict=True))
        own = np.array([fold_of[p] == i for p in pool.paths], dtype=bool)
        splits = {name: subset(pool, name, mask) for name, mask in (("train", ~own), ("val", own))}
        if "test" in self.pool.splits:
            splits["test"] = self.pool.splits["test"]
        files = {name: f.paths for name, f in found.splits.items()}
        fp = fingerprint.resplit(self.pool.fingerprint, found.root, files)
        return PreparedData(found, self.pool.img_size, self.pool.interpolation, splits, self.pool.skipped, fp,
                            fold=(i, self.k))  # fmt: skip

    @property
    def classes(self) -> list[str]:
        return self.pool.classes


def subset(split: SplitData, name: str, mask: np.ndarray) -> SplitData:
    return SplitData(name, split.cache, [p for p, m in zip(split.paths, mask, strict=True) if m], split.labels[mask],
                     split.rows[mask])  # fmt: skip


def prepare_folds(config: TrainConfig, k: int, quiet: bool = False) -> FoldedData:
    """Train and val pooled and decoded once, and each pool file's fold; refused when a class has fewer images
    than folds."""
    data = prepare_data(config, quiet, pool=True)
    check_folds(data.discovered, k)
    files = data.discovered.splits["train"]
    entries = data.fingerprint.splits["train"]
    keys = [entries[fingerprint.relative(p, data.discovered.root)][1] for p in files.paths]
    return FoldedData(data, assign_folds(keys, files.labels, k), k)
