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


def build_feature_cache(
    key: str,
    n: int,
    views: int,
    compute: Callable[[np.ndarray, int], torch.Tensor],  # (row indices, view) -> features (B, ...)
    batch_size: int,
    cache_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> RowStore:
    """Rows of frozen-prefix outputs, shape (n, views, *feature_shape), float32; reused when the key matches."""
    folder = Path(cache_dir) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = folder / f"{key}.f32", folder / f"{key}.json"
    if meta_path.exists() and data_path.exists():
        meta = json.loads(meta_path.read_text())
        return RowStore(data_path, tuple(meta["shape"]), np.float32)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    feature_shape: tuple[int, ...] | None = None
    with open(tmp, "wb") as f:
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size))
            per_view = [compute(idx, v).float().cpu().numpy() for v in range(views)]
            block = np.stack(per_view, axis=1)  # (B, views, ...)
            if feature_shape is None:
                feature_shape = block.shape[2:]
                row_bytes = block[0].nbytes
                f.truncate(n * row_bytes)
            os.pwrite(f.fileno(), np.ascontiguousarray(block).tobytes(), start * row_bytes)
            if progress:
                progress(len(idx))
        f.flush()
        os.fsync(f.fileno())
    assert feature_shape is not None
    shape = (n, views, *feature_shape)
    os.replace(tmp, data_path)
    atomic_write_text(meta_path, json.dumps({"shape": list(shape)}))
    return RowStore(data_path, shape, np.float32)
