"""Decode-once image cache and frozen-prefix feature cache, both as fixed-size rows in a file on disk.

Rows are read with pread (not mmap) so the page cache, not the process, holds the data: resident memory
stays flat whatever the dataset size. A cache is written to a temp file and renamed into place with its
metadata last, so a killed build is never read back; its key covers everything that changes its contents.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from thawline.config import atomic_write_text
from thawline.images import BadImage, decode_resized

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("THAWLINE_CACHE_DIR") or Path.home() / ".cache" / "thawline")


class RowStore:
    """A file of equal-size rows: row i at offset i * row_bytes."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype | str) -> None:
        self.path = Path(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        buf = out.reshape(len(indices), -1).view(np.uint8)
        fd = self._file()
        for j, i in enumerate(indices):
            n = os.preadv(fd, [buf[j]], int(i) * self.row_bytes)
            if n != self.row_bytes:
                raise OSError(f"cache file {self.path} is shorter than expected; delete it and rerun")
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def _file_signature(paths: Sequence[str]) -> str:
    h = hashlib.sha1()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


@dataclass
class ImageCache:
    store: RowStore
    ok: np.ndarray  # bool per input path: False where the file could not be decoded
    bad: list[tuple[str, str]]  # (path, reason) for each skipped file
    key: str


def _decode_chunk(args: tuple[list[str], int, str]) -> list[np.ndarray | tuple[str, str]]:
    paths, size, interpolation = args
    out: list[np.ndarray | tuple[str, str]] = []
    for p in paths:
        try:
            out.append(decode_resized(p, size, interpolation))
        except BadImage as e:
            out.append((e.path, e.reason))
    return out


def build_image_cache(
    paths: Sequence[str],
    size: int,
    interpolation: str,
    cache_dir: Path,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImageCache:
    """Decode, convert to RGB and resize every image once into a uint8 (N, size, size, 3) row file."""
    key = hashlib.sha1(
        f"v{CACHE_VERSION}|{size}|{interpolation}|{len(paths)}|{_file_signature(paths)}".encode()
    ).hexdigest()[:20]
    folder = Path(cache_dir) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = folder / f"{key}.u8", folder / f"{key}.json"
    shape = (len(paths), size, size, 3)
    if meta_path.exists() and data_path.exists():
        meta = json.loads(meta_path.read_text())
        return ImageCache(
            RowStore(data_path, shape, np.uint8), np.array(meta["ok"], bool), [tuple(b) for b in meta["bad"]], key
        )
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    ok = np.ones(len(paths), bool)
    bad: list[tuple[str, str]] = []
    row_bytes = size * size * 3
    chunk = 64
    jobs = [(list(paths[i : i + chunk]), size, interpolation) for i in range(0, len(paths), chunk)]
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    with open(tmp, "wb") as f:
        f.truncate(len(paths) * row_bytes)
        results = map(_decode_chunk, jobs) if n_workers == 1 else None
        pool = ProcessPoolExecutor(n_workers) if n_workers > 1 else None
        try:
            if pool is not None:
                results = pool.map(_decode_chunk, jobs)
            i = 0
            for rows in results:
                for row in rows:
                    if isinstance(row, tuple):
                        ok[i] = False
                        bad.append(row)
                    else:
                        os.pwrite(f.fileno(), row.tobytes(), i * row_bytes)
                    i += 1
                if progress:
                    progress(len(rows))
        finally:
            if pool is not None:
                pool.shutdown()
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, data_path)
    atomic_write_text(meta_path, json.dumps({"ok": ok.tolist(), "bad": bad, "size": size, "n": len(paths)}))
    return ImageCache(RowStore(data_path, shape, np.uint8), ok, bad, key)


def state_fingerprint(module_state: dict[str, torch.Tensor]) -> str:
    """Hash of the tensors that define a frozen prefix: a feature cache is valid only for these exact values."""
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
    (the plain loop's cost), instead of once per image and view up front; `fill_all` does it up front."""

    def __init__(
        self,
        key: str,
        n: int,
        views: int,
        compute: Callable[[np.ndarray, int], torch.Tensor],  # (row indices, view) -> features (B, ...)
        batch_size: int,
        cache_dir: Path,
    ) -> None:
        folder = Path(cache_dir) / "features"
        folder.mkdir(parents=True, exist_ok=True)
        self.data_path, self.meta_path = folder / f"{key}.f32", folder / f"{key}.json"
        self.n, self.views, self.compute, self.batch_size = n, views, compute, batch_size
        self.feature_shape: tuple[int, ...] | None = None
        self.filled = np.zeros((n, views), bool)
        self._fd: int | None = None
        self._dirty = False
        meta = self._meta()
        if meta is not None and self.data_path.exists():
            shape = tuple(meta["shape"])
            row_bytes = int(np.prod(shape[2:])) * 4
            if shape[:2] == (n, views) and self.data_path.stat().st_size == n * views * row_bytes:
                self.feature_shape = shape[2:]
                self.filled = self._bitmap(meta)

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

    def _file(self) -> int:
        if self._fd is None:
            # A complete cache is only read (it may sit in a read-only shared folder).
            flags = os.O_RDONLY if self.complete else os.O_RDWR | os.O_CREAT
            self._fd = os.open(self.data_path, flags, 0o644)
            size = self.n * self.views * self._row_bytes
            if os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)  # sparse: rows take disk space as they are filled
        return self._fd

    def fill(self, rows: np.ndarray, views: np.ndarray) -> None:
        """Compute and store the (row, view) pairs among these that are not filled yet."""
        rows, views = np.asarray(rows, np.int64), np.asarray(views, np.int64)
        need = ~self.filled[rows, views]
        for v in np.unique(views[need]):
            todo = np.unique(rows[need & (views == v)])
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                feats = np.ascontiguousarray(self.compute(chunk, int(v)).float().cpu().numpy())
                if self.feature_shape is None:
                    self.feature_shape = feats.shape[1:]
                fd = self._file()
                for i, row in zip(chunk, feats, strict=True):
                    os.pwrite(fd, row.tobytes(), (int(i) * self.views + int(v)) * self._row_bytes)
                self.filled[chunk, v] = True
                self._dirty = True

    def fill_all(self, progress: Callable[[int], None] | None = None) -> None:
        """Every image in every view, in order (the eager cache: val splits, and every rank under DDP)."""
        for start in range(0, self.n, self.batch_size):
            idx = np.arange(start, min(self.n, start + self.batch_size))
            for v in range(self.views):
                self.fill(idx, np.full(len(idx), v))
            if progress:
                progress(len(idx))
        self.flush()

    def read(self, rows: np.ndarray, views: np.ndarray) -> np.ndarray:
        """Features (B, *feature_shape) of image rows[j] in view views[j], computing the missing ones first."""
        self.fill(rows, views)
        out = np.empty((len(rows), *(self.feature_shape or ())), np.float32)
        buf = out.reshape(len(rows), -1).view(np.uint8)
        fd, row_bytes = self._file(), self._row_bytes
        for j, (i, v) in enumerate(zip(rows, views, strict=True)):
            if os.preadv(fd, [buf[j]], (int(i) * self.views + int(v)) * row_bytes) != row_bytes:
                raise OSError(f"cache file {self.data_path} is shorter than expected; delete it and rerun")
        return out

    def flush(self) -> None:
        """Make the rows filled so far durable, then mark them in the bitmap (merged with other writers' marks)."""
        if not self._dirty or self._fd is None:
            return
        os.fsync(self._fd)
        meta = self._meta()
        if meta is not None and tuple(meta.get("shape", ())) == self.shape:
            self.filled |= self._bitmap(meta)
        bits = np.packbits(self.filled.reshape(-1)).tobytes().hex()
        atomic_write_text(self.meta_path, json.dumps({"shape": list(self.shape), "filled": bits}))
        self._dirty = False

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
