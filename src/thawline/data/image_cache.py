"""The decode-once image cache: every image decoded and resized once into uint8 rows (`build_image_cache`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thawline.core.atomic import CACHE_ELSEWHERE, write_text_atomic, writing
from thawline.data.cache_admin import enforce_limit
from thawline.data.cache_store import RowStore, _describe_images, _pwrite_all, _touch, _use, image_cache_key
from thawline.data.images import BadImage, decode_resized


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


def _worker_init() -> None:
    """Decode workers leave Ctrl-C to the main process: it stops them, removes its temp file and says one line.
    (They start with SIGINT blocked, see `_decode_all`, so a Ctrl-C before this runs is dropped, not a traceback.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _decode_all(pool: ProcessPoolExecutor, jobs: list) -> Iterable[list[np.ndarray | tuple[str, str]]]:
    """pool.map with SIGINT blocked while it starts the workers: a forked worker inherits the mask until
    `_worker_init` ignores the signal. The main process gets a Ctrl-C sent meanwhile once the mask is restored."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.map(_decode_chunk, jobs)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _stop_pool(pool: ProcessPoolExecutor, interrupted: bool) -> None:
    if interrupted:  # do not wait for the chunks being decoded: end the workers now
        if hasattr(pool, "terminate_workers"):  # Python >= 3.14
            pool.terminate_workers()
            return
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _read_image_meta(meta_path: Path, data_path: Path, n: int, row_bytes: int) -> dict | None:
    """The metadata of a complete image cache, or None when it is missing, unreadable or does not match."""
    try:
        meta = json.loads(meta_path.read_text())
        if len(meta["ok"]) != n or data_path.stat().st_size != n * row_bytes:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def is_cached(paths: Sequence[str], size: int, interpolation: str, cache_dir: Path) -> bool:
    """Whether `build_image_cache` would find these images decoded already (a plan's question: nothing decoded,
    nothing written but the key's memo)."""
    folder = Path(cache_dir) / "images"
    if not folder.is_dir():
        return False
    key = image_cache_key(paths, size, interpolation, folder)
    meta = _read_image_meta(folder / f"{key}.json", folder / f"{key}.u8", len(paths), size * size * 3)
    return meta is not None


def build_image_cache(
    paths: Sequence[str],
    size: int,
    interpolation: str,
    cache_dir: Path,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImageCache:
    """Decode, convert to RGB and resize every image once into a uint8 (N, size, size, 3) row file."""
    root = Path(cache_dir)
    folder = root / "images"
    with writing(folder, CACHE_ELSEWHERE):
        folder.mkdir(parents=True, exist_ok=True)
    key = image_cache_key(paths, size, interpolation, folder)
    data_path, meta_path = folder / f"{key}.u8", folder / f"{key}.json"
    shape = (len(paths), size, size, 3)
    row_bytes = size * size * 3
    meta = _read_image_meta(meta_path, data_path, len(paths), row_bytes)
    if meta is not None:
        _touch(meta_path)
        _use(data_path)
        cache = ImageCache(
            RowStore(data_path, shape, np.uint8), np.array(meta["ok"], bool), [tuple(b) for b in meta["bad"]], key
        )
        enforce_limit(root)
        return cache
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    ok = np.ones(len(paths), bool)
    bad: list[tuple[str, str]] = []
    chunk = 64
    jobs = [(list(paths[i : i + chunk]), size, interpolation) for i in range(0, len(paths), chunk)]
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    try:
        with writing(data_path, CACHE_ELSEWHERE):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, len(paths) * row_bytes)  # sparse until written; a file-size limit shows here
                pool = ProcessPoolExecutor(n_workers, initializer=_worker_init) if n_workers > 1 else None
                interrupted = True
                try:
                    results = map(_decode_chunk, jobs) if pool is None else _decode_all(pool, jobs)
                    i = 0
                    for rows in results:
                        for row in rows:
                            if isinstance(row, tuple):
                                ok[i] = False
                                bad.append(row)
                            else:
                                _pwrite_all(fd, row.tobytes(), i * row_bytes)
                            i += 1
                        if progress:
                            progress(len(rows))
                    interrupted = False
                finally:
                    if pool is not None:
                        _stop_pool(pool, interrupted)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, data_path)
        meta = {
            "ok": ok.tolist(),
            "bad": bad,
            "size": size,
            "n": len(paths),
            "interpolation": interpolation,
            "for": _describe_images(paths, size, interpolation),
        }
        try:
            write_text_atomic(meta_path, json.dumps(meta), elsewhere=CACHE_ELSEWHERE)
        except BaseException:
            data_path.unlink(missing_ok=True)  # rows without their metadata would never be read
            raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _use(data_path)
    cache = ImageCache(RowStore(data_path, shape, np.uint8), ok, bad, key)
    enforce_limit(root)
    return cache
