"""The frozen-prefix feature cache: a frozen prefix's outputs as rows, filled once and read back each epoch."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from thawline.core.atomic import CACHE_ELSEWHERE, write_text_atomic, writing
from thawline.core.errors import ThawlineError
from thawline.data.cache_admin import enforce_limit
from thawline.data.cache_store import _pwrite_all, _release, _share_lock, _touch, _use

if TYPE_CHECKING:  # torch is imported where features are hashed: `thawline cache ls` starts in a blink
    import torch


def state_fingerprint(module_state: dict[str, torch.Tensor]) -> str:
    """Hash of the tensors that define a frozen prefix: a feature cache is valid only for these exact values."""
    import torch

    h = hashlib.sha1()
    for name in sorted(module_state):
        t = module_state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:20]


class FeatureCache:
    """Frozen-prefix outputs per (image, view), computed on first use and kept on disk for later epochs and runs.

    One float32 file of rows (n, views, *feature_shape) at its final path, sparse until filled, and a JSON bitmap
    beside it marking the rows that are complete: written and fsynced before they are marked, and only marked rows
    (or rows this process wrote) are ever read, so a killed run or a concurrent writer costs at worst a row computed
    again. Filling on first use means a phase's first epoch runs the prefix once per image, for the view it draws
    (the plain loop's cost), instead of once per image and view up front; `fill_all` does it up front.

    Every prefix call computes exactly `batch_size` pairs, a short chunk padded with repeats of its own pairs: a
    kernel may pick another algorithm for another batch size (on the 2-core CPU, Lite0's forward differs in the last
    bits for a batch of 1 and is identical for every size from 2 to 64), so a fixed size makes a feature's value
    independent of which batch, epoch or concurrent trial (`compare --jobs`) computed it first."""

    def __init__(
        self,
        key: str,
        n: int,
        views: int,
        compute: Callable[[np.ndarray, np.ndarray], torch.Tensor],  # (row indices, their views) -> features (B, ...)
        batch_size: int,
        cache_dir: Path,
    ) -> None:
        self.root = Path(cache_dir)
        folder = self.root / "features"
        with writing(folder, CACHE_ELSEWHERE):
            folder.mkdir(parents=True, exist_ok=True)
        self.data_path, self.meta_path = folder / f"{key}.f32", folder / f"{key}.json"
        _use(self.data_path)
        self._released = False
        self._wrote = False
        self.n, self.views, self.compute, self.batch_size = n, views, compute, batch_size
        self.feature_shape: tuple[int, ...] | None = None
        self.filled = np.zeros((n, views), bool)
        self._fd: int | None = None
        self._writable = False
        self._dirty = False
        meta = self._meta()
        if meta is not None and self.data_path.exists():
            shape = tuple(meta["shape"])
            row_bytes = int(np.prod(shape[2:])) * 4
            if shape[:2] == (n, views) and self.data_path.stat().st_size == n * views * row_bytes:
                self.feature_shape = shape[2:]
                self.filled = self._bitmap(meta)
                _touch(self.meta_path)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, self.views, *(self.feature_shape or ()))

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())

    def _meta(self) -> dict | None:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None

    def _bitmap(self, meta: dict) -> np.ndarray:
        if "filled" not in meta:  # written whole (thawline <= 0.1 caches)
            return np.ones((self.n, self.views), bool)
        bits = np.frombuffer(bytes.fromhex(meta["filled"]), np.uint8)
        return np.unpackbits(bits, count=self.n * self.views).astype(bool).reshape(self.n, self.views)

    @property
    def _row_bytes(self) -> int:
        assert self.feature_shape is not None
        return int(np.prod(self.feature_shape)) * 4

    def _file(self, write: bool = False) -> int:
        if self._fd is not None and write and not self._writable:
            os.close(self._fd)  # opened to read; now a row is to be written
            self._fd = None
        if self._fd is None:
            # Rows that are all filled are only read: the cache may sit in a read-only shared folder (and a split
            # never fills every row of the file: other folds' images, val's mirror images).
            flags = os.O_RDWR | os.O_CREAT if write else os.O_RDONLY
            with writing(self.data_path, CACHE_ELSEWHERE):
                fd = os.open(self.data_path, flags, 0o644)
                _share_lock(fd)
                size = self.n * self.views * self._row_bytes
                try:
                    if write and os.fstat(fd).st_size != size:
                        os.ftruncate(fd, size)  # sparse: rows take disk space as they are filled
                except BaseException:
                    os.close(fd)
                    raise
            self._fd, self._writable = fd, write
        return self._fd

    def fill(self, rows: np.ndarray, views: np.ndarray) -> None:
        """Compute and store the (row, view) pairs among these that are not filled yet.

        Both views go into one prefix call (up to batch_size pairs): an epoch's first pass then calls the prefix with
        whole batches, the same size every step, so the kept heap reuses the same blocks (calls split by view have a
        random size each step, and the heap crept up by ~500 MB over a 10,000-image Lite0 epoch at 224 px)."""
        rows, views = np.asarray(rows, np.int64), np.asarray(views, np.int64)
        need = ~self.filled[rows, views]
        pairs = np.unique(rows[need] * self.views + views[need])  # row-major: a pair's row in the file
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            chunk_rows, chunk_views = chunk // self.views, chunk % self.views
            call = np.resize(chunk, self.batch_size)  # the fixed call size (see the class docstring)
            feats = self.compute(call // self.views, call % self.views)[: len(chunk)]
            feats = np.ascontiguousarray(feats.float().cpu().numpy())
            if self.feature_shape is None:
                self.feature_shape = feats.shape[1:]
            fd = self._file(write=True)
            with writing(self.data_path, CACHE_ELSEWHERE):
                for pair, row in zip(chunk, feats, strict=True):
                    _pwrite_all(fd, row.tobytes(), int(pair) * self._row_bytes)
            self.filled[chunk_rows, chunk_views] = True
            self._dirty = True

    def missing(self, rows: np.ndarray | None = None, views: Sequence[int] | None = None) -> np.ndarray:
        """The (row, view) pairs not filled yet among `rows` (default: all) in `views` (default: all), as their
        indices in the file (row * views + view), in file order."""
        rows = np.arange(self.n) if rows is None else np.unique(np.asarray(rows, np.int64))
        wanted = np.arange(self.views) if views is None else np.asarray(sorted(set(views)), np.int64)
        pairs = (rows[:, None] * self.views + wanted[None, :]).reshape(-1)
        return pairs[~self.filled.reshape(-1)[pairs]]

    def fill_all(
        self,
        progress: Callable[[int], None] | None = None,
        rows: np.ndarray | None = None,
        views: Sequence[int] | None = None,
    ) -> None:
        """Every pair `missing(rows, views)` names, in file order and in whole calls (the eager cache: val splits,
        every rank under DDP; the rest of a lazily filled cache). `progress` gets the pairs computed."""
        missing = self.missing(rows, views)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            self.fill(chunk // self.views, chunk % self.views)
            if progress:
                progress(len(chunk))
        self.flush()

    def read(self, rows: np.ndarray, views: np.ndarray) -> np.ndarray:
        """Features (B, *feature_shape) of image rows[j] in view views[j], computing the missing ones first."""
        self.fill(rows, views)
        out = np.empty((len(rows), *(self.feature_shape or ())), np.float32)
        buf = out.reshape(len(rows), -1).view(np.uint8)
        fd, row_bytes = self._file(), self._row_bytes
        for j, (i, v) in enumerate(zip(rows, views, strict=True)):
            if os.preadv(fd, [buf[j]], (int(i) * self.views + int(v)) * row_bytes) != row_bytes:
                raise ThawlineError(f"cache file {self.data_path} is shorter than expected; delete it and rerun")
        return out

    def flush(self) -> None:
        """Make the rows filled so far durable, then mark them in the bitmap (merged with other writers' marks)."""
        if not self._dirty or self._fd is None:
            return
        with writing(self.data_path, CACHE_ELSEWHERE):
            os.fsync(self._fd)
        meta = self._meta()
        if meta is not None and tuple(meta.get("shape", ())) == self.shape:
            self.filled |= self._bitmap(meta)
        bits = np.packbits(self.filled.reshape(-1)).tobytes().hex()
        write_text_atomic(
            self.meta_path, json.dumps({"shape": list(self.shape), "filled": bits}), elsewhere=CACHE_ELSEWHERE
        )
        self._dirty = False
        self._wrote = True

    def close(self) -> None:
        try:
            self.flush()
            if self._wrote:
                self._wrote = False
                enforce_limit(self.root)  # this cache grew: keep the folder under its cap (itself still protected)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if not self._released:
                self._released = True
                _release(self.data_path)


class SplitFeatures:
    """One split's view of a feature cache whose rows are the image cache's rows: the train and val splits of the
    folds of `compare --folds` (subsets of one pooled split) and its refit share their frozen-prefix outputs, each
    image computed once per view for all of them. Position i of the split is image-cache row `rows[i]`; the split
    reads only `views` (val: the unflipped view of a cache that holds both)."""

    def __init__(self, store: FeatureCache, rows: np.ndarray, views: Sequence[int]) -> None:
        self.store, self.rows, self.views = store, np.asarray(rows, np.int64), tuple(views)

    def read(self, positions: np.ndarray, views: np.ndarray) -> np.ndarray:
        return self.store.read(self.rows[positions], views)

    def missing(self) -> int:
        return len(self.store.missing(self.rows, self.views))

    @property
    def complete(self) -> bool:
        return self.missing() == 0

    def fill_all(self, progress: Callable[[int], None] | None = None) -> None:
        self.store.fill_all(progress, self.rows, self.views)

    def flush(self) -> None:
        self.store.flush()

    def close(self) -> None:
        self.store.close()
