"""Decode-once image cache and frozen-prefix feature cache, both as fixed-size rows in a file on disk.

Rows are read with pread (not mmap) so the page cache, not the process, holds the data: resident memory
stays flat whatever the dataset size. A cache is written to a temp file and renamed into place with its
metadata last, so a killed build (or Ctrl-C) is never read back; its key covers everything that changes its contents,
the bytes of every image file included. The cache folder is capped (THAWLINE_CACHE_MAX_GB, default 20): entries are
touched when used and the least recently used go first, never one that a run still reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import signal
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from thawline.atomic import CACHE_ELSEWHERE, WriteFailed, write_text_atomic, writing
from thawline.errors import ThawlineError
from thawline.images import BadImage, decode_resized

if TYPE_CHECKING:  # torch is imported where features are hashed: `thawline cache ls` starts in a blink
    import torch

CACHE_VERSION = 3  # 2: image keys cover the files' bytes, not only their size and mtime; 3: large JPEGs decoded scaled
MAX_GB_ENV = "THAWLINE_CACHE_MAX_GB"
DEFAULT_MAX_GB = 20.0
# A file changed this recently may change again within its clock tick unseen by stat: its content hash is not memoised.
RACY_S = 2.0
# A temp file without an owner pid (an atomic write's) this old was left by a killed process.
STALE_TEMP_S = 3600.0

# Data files of the cache entries this process has open: its own eviction never removes them (other processes'
# entries are protected by the shared flock their readers hold).
_IN_USE: Counter[str] = Counter()


def default_cache_dir() -> Path:
    return Path(os.environ.get("THAWLINE_CACHE_DIR") or Path.home() / ".cache" / "thawline")


def _use(path: Path) -> None:
    _IN_USE[str(path)] += 1


def _release(path: Path) -> None:
    _IN_USE[str(path)] -= 1
    if _IN_USE[str(path)] <= 0:
        del _IN_USE[str(path)]


def _share_lock(fd: int) -> None:
    """A shared flock on an open cache file: another process's eviction skips the entry while it is held."""
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)


def _touch(*paths: Path) -> None:
    """Mark a cache entry used now (its LRU time); best effort, a read-only shared cache stays as it is."""
    for p in paths:
        with contextlib.suppress(OSError):
            os.utime(p)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(28, os.strerror(28))  # ENOSPC: a write that makes no progress
        view, offset = view[n:], offset + n


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
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                raise ThawlineError(
                    f"cache file {self.path} was removed while in use (thawline cache clear, or the size cap); rerun"
                ) from None
            _share_lock(self._fd)
            _use(self.path)
        return self._fd

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        buf = out.reshape(len(indices), -1).view(np.uint8)
        fd = self._file()
        for j, i in enumerate(indices):
            n = os.preadv(fd, [buf[j]], int(i) * self.row_bytes)
            if n != self.row_bytes:
                raise ThawlineError(f"cache file {self.path} is shorter than expected; delete it and rerun")
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            _release(self.path)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the module's globals may be gone already
            self.close()


# ---- keys -----------------------------------------------------------------------------------------------------


def _stat_signature(paths: Sequence[str]) -> tuple[str, int]:
    """(hash of every file's path, size, mtime, ctime and inode; newest of those times in ns).

    cp -p and rsync -t keep size and mtime but cannot keep ctime or the inode, so a replaced file changes this."""
    h = hashlib.blake2b(digest_size=20)
    newest = 0
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            h.update(f"{p}\0missing\n".encode())
            continue
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0{st.st_dev}\n".encode())
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return h.hexdigest(), newest


def _file_digest(path: str) -> bytes:
    # O_NONBLOCK: a named pipe in the folder must not block the key (decoding reports it as not a regular file)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b"not a regular file"
        h = hashlib.blake2b(digest_size=16)
        step = min(1 << 20, st.st_size + 1)  # one read for a small file
        while chunk := os.read(fd, step):
            h.update(chunk)
        return h.digest()
    finally:
        os.close(fd)


def _content_signature(paths: Sequence[str]) -> str:
    """Hash of every file's path and bytes (blake2b): what the decoded pixels depend on."""
    h = hashlib.blake2b(digest_size=20)
    for p in paths:
        h.update(f"{p}\0".encode())
        try:
            h.update(_file_digest(p))
        except OSError:
            h.update(b"missing")
    return h.hexdigest()


def image_cache_key(paths: Sequence[str], size: int, interpolation: str, folder: Path | None = None) -> str:
    """The image cache key: decode settings and every file's path and bytes.

    Reading every file each run costs (60,000 Fashion-MNIST PNGs: ~1 s warm, ~6 s cold), so the content hash is
    memoised in `folder`/index under the files' stat signature, which includes ctime and inode: any write, rename
    onto, or cp -p/rsync -t replacement of a file changes it, and its content is hashed again."""
    params = f"v{CACHE_VERSION}|{size}|{interpolation}|{len(paths)}"
    memo: Path | None = None
    if folder is not None:
        stat_sig, newest = _stat_signature(paths)
        memo = folder / "index" / hashlib.blake2b(f"{params}|{stat_sig}".encode(), digest_size=12).hexdigest()
        with contextlib.suppress(OSError, UnicodeDecodeError):
            key = memo.read_text().strip()
            if re.fullmatch(r"[0-9a-f]{20}", key):
                return key
    key = hashlib.blake2b(f"{params}|{_content_signature(paths)}".encode(), digest_size=10).hexdigest()
    if memo is not None and time.time_ns() - newest > RACY_S * 1e9:
        with contextlib.suppress(OSError, WriteFailed):
            memo.parent.mkdir(exist_ok=True)
            write_text_atomic(memo, key + "\n")
    return key


def _describe_images(paths: Sequence[str], size: int, interpolation: str) -> str:
    try:
        where = os.path.commonpath([os.path.abspath(p) for p in paths]) if paths else "?"
    except ValueError:
        where = "several places"
    if len(paths) == 1:
        where = os.path.dirname(where)
    return f"{len(paths)} images under {where} at {size} px ({interpolation})"


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
    (the plain loop's cost), instead of once per image and view up front; `fill_all` does it up front."""

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

    def _file(self) -> int:
        if self._fd is None:
            # A complete cache is only read (it may sit in a read-only shared folder).
            flags = os.O_RDONLY if self.complete else os.O_RDWR | os.O_CREAT
            with writing(self.data_path, CACHE_ELSEWHERE):
                fd = os.open(self.data_path, flags, 0o644)
                _share_lock(fd)
                size = self.n * self.views * self._row_bytes
                try:
                    if os.fstat(fd).st_size != size:
                        os.ftruncate(fd, size)  # sparse: rows take disk space as they are filled
                except BaseException:
                    os.close(fd)
                    raise
            self._fd = fd
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
            feats = np.ascontiguousarray(self.compute(chunk_rows, chunk_views).float().cpu().numpy())
            if self.feature_shape is None:
                self.feature_shape = feats.shape[1:]
            fd = self._file()
            with writing(self.data_path, CACHE_ELSEWHERE):
                for pair, row in zip(chunk, feats, strict=True):
                    _pwrite_all(fd, row.tobytes(), int(pair) * self._row_bytes)
            self.filled[chunk_rows, chunk_views] = True
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


# ---- size cap, listing and clearing ---------------------------------------------------------------------------


@dataclass
class CacheEntry:
    """One cache entry: an image cache (.u8 + .json), a feature cache (.f32 + .json), or a partial file."""

    kind: str  # images | features | partial
    key: str
    files: list[Path]
    size: int  # bytes on disk (feature caches are sparse until filled)
    last_used: float  # the newest mtime of its files: touched on every use
    what: str
    busy: bool = False  # a build in progress (partial file of a live process)

    @property
    def data(self) -> Path:
        return self.files[0]


def cache_limit_bytes() -> int | None:
    """The cap on the cache folder's size from THAWLINE_CACHE_MAX_GB (default 20 GB); None when `off`."""
    text = os.environ.get(MAX_GB_ENV, "").strip()
    if not text:
        return int(DEFAULT_MAX_GB * 1e9)
    if text.lower() in ("off", "none", "inf", "unlimited"):
        return None
    try:
        gb = float(text)
        if not gb >= 0 or gb == float("inf"):
            raise ValueError
    except ValueError:
        raise ThawlineError(
            f"{MAX_GB_ENV}={text!r} is not a size in GB; set a number such as 20 (or 'off' for no cap)"
        ) from None
    return int(gb * 1e9)


def _disk_size(path: Path) -> int:
    """Bytes `path` takes on disk, as du counts them (a sparse feature cache counts only its filled rows)."""
    try:
        st = path.stat()
    except OSError:
        return 0
    return st.st_blocks * 512


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _describe_features(key: str, images: dict[str, str]) -> str:
    """What a feature cache holds, from its key: sources.features (model_sK_vV_imagekey_state_n_rows) or advise
    (advise_model_imagekey_state_amp_n_rows); else the image cache it was computed from, when its key is in it."""

    def of(image_key: str) -> str:
        return re.sub(r"^\d+ images", "images", images.get(image_key) or f"image cache {image_key}")

    parts = key.rsplit("_", 6)
    if len(parts) == 7 and re.fullmatch(r"s\d+", parts[1]) and re.fullmatch(r"v\d+", parts[2]):
        model, stage, views, image_key, _, n, _ = parts
        return f"{model} features before stage {stage[1:]}, {views[1:]} view(s), {n} images ({of(image_key)})"
    parts = key.rsplit("_", 5)
    if key.startswith("advise_") and len(parts) == 6 and parts[4].isdigit():
        return f"advise probe features of {parts[0][len('advise_') :]}, {parts[4]} images ({of(parts[1])})"
    known = [token for token in key.split("_") if token in images]
    return f"features of {of(known[0])}" if known else ""


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry in the cache folder `root` (default: the user cache), least recently used first."""
    root = Path(root) if root is not None else default_cache_dir()
    entries: list[CacheEntry] = []
    images: dict[str, str] = {}
    now = time.time()
    for kind, suffix in (("images", ".u8"), ("features", ".f32")):
        folder = root / kind
        if not folder.is_dir():
            continue
        seen: set[str] = set()
        for path in sorted(folder.iterdir()):
            name = path.name
            if name.startswith("."):
                if not name.endswith(".tmp") or not path.is_file():
                    continue
                found = re.fullmatch(r"\.([0-9a-f]{20})\.(\d+)\.tmp", name)
                if found:  # the rows of an image cache being built
                    pid = int(found.group(2))
                    busy = _pid_alive(pid)
                    what = f"build in progress (pid {pid})" if busy else f"left by a stopped build (pid {pid})"
                else:  # an atomic write's temp file
                    busy = now - _mtime(path) < STALE_TEMP_S
                    what = "write in progress" if busy else "left by a stopped write"
                entries.append(CacheEntry("partial", name, [path], _disk_size(path), _mtime(path), what, busy))
                continue
            if path.suffix not in (suffix, ".json") or path.stem in seen:
                continue
            seen.add(path.stem)
            data, meta_path = folder / f"{path.stem}{suffix}", folder / f"{path.stem}.json"
            files = [p for p in (data, meta_path) if p.exists()]
            meta = _read_json(meta_path) if meta_path.exists() else {}
            what = str(meta.get("for", ""))
            if kind == "images" and what:
                images[path.stem] = what
            if not data.exists() or not meta_path.exists():
                what = "incomplete (rows or metadata missing)"
            entries.append(
                CacheEntry(
                    kind, path.stem, files, sum(_disk_size(p) for p in files), max(_mtime(p) for p in files), what
                )
            )
    for e in entries:
        if e.kind == "features" and not e.what:
            e.what = _describe_features(e.key, images)
    entries.sort(key=lambda e: e.last_used)
    return entries


def _try_remove(entry: CacheEntry) -> bool:
    """Remove `entry` unless a run reads or builds it (this process has it open, or another holds its flock): True
    when removed, False when in use. An OSError (a read-only cache folder) is raised."""
    if entry.busy or str(entry.data) in _IN_USE:
        return False
    fd = None
    if entry.kind != "partial":
        try:
            fd = os.open(entry.data, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a reader in another process holds it
        for path in entry.files:  # rows first: metadata without rows is never read back
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return True
    finally:
        if fd is not None:
            os.close(fd)


def _prune_index(root: Path) -> None:
    """Drop memoised image keys whose cache is gone."""
    index = root / "images" / "index"
    if not index.is_dir():
        return
    for memo in index.iterdir():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            key = memo.read_text().strip()
            if not (root / "images" / f"{key}.u8").exists():
                memo.unlink()


def evict(
    root: Path | None = None, limit: int | None = None, entries: Iterable[CacheEntry] | None = None
) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Remove least recently used entries of `root` (or of `entries`) until it holds at most `limit` bytes (all of
    them when `limit` is None); entries in use stay. Partial files of stopped processes go first.
    Returns (removed, kept because in use)."""
    root = Path(root) if root is not None else default_cache_dir()
    entries = list(entries) if entries is not None else cache_entries(root)
    total = sum(e.size for e in entries)
    garbage = [e for e in entries if e.kind == "partial" and not e.busy]
    building = [e for e in entries if e.kind == "partial" and e.busy]
    order = garbage + [e for e in entries if e.kind != "partial"] + building
    removed: list[CacheEntry] = []
    kept: list[CacheEntry] = []
    try:
        for entry in order:
            if limit is not None and total <= limit and entry not in garbage:
                break
            if _try_remove(entry):
                removed.append(entry)
                total -= entry.size
            else:
                kept.append(entry)
    except OSError as e:
        done = f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} first; " if removed else ""
        raise WriteFailed(
            e.filename or entry.data,
            e,
            message=f"cannot remove {e.filename or entry.data} from the cache: {e.strerror} ({done}make {root} "
            f"writable, or set THAWLINE_CACHE_DIR elsewhere)",
        ) from None
    finally:
        if removed:
            with contextlib.suppress(OSError):
                _prune_index(root)
    return removed, kept


def enforce_limit(root: Path | None = None) -> list[CacheEntry]:
    """Keep the cache folder under THAWLINE_CACHE_MAX_GB; never fails a run (eviction is best effort)."""
    limit = cache_limit_bytes()
    if limit is None:
        return []
    try:
        return evict(root, limit)[0]
    except (OSError, WriteFailed):
        return []


def clear(root: Path | None = None, older_than_days: float | None = None) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Remove every entry (or those last used more than `older_than_days` ago) that no run is using.
    Returns (removed, kept because in use)."""
    root = Path(root) if root is not None else default_cache_dir()
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    chosen = [e for e in cache_entries(root) if cutoff is None or e.last_used < cutoff]
    removed, kept = evict(root, None, chosen)
    with contextlib.suppress(OSError):
        _prune_index(root)
    return removed, kept


# ---- `thawline cache ls` / `thawline cache clear` -------------------------------------------------------------


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _limit_text() -> str:
    try:
        limit = cache_limit_bytes()
    except ThawlineError as e:
        return str(e)
    return f"no cap ({MAX_GB_ENV}=off)" if limit is None else f"cap {fmt_bytes(limit)}, {MAX_GB_ENV}"


def format_entries(root: Path | None = None) -> str:
    """`thawline cache ls`: one line per entry (kind, size, last used, what it is for), then the total."""
    root = Path(root) if root is not None else default_cache_dir()
    entries = cache_entries(root)[::-1]  # most recently used first
    if not entries:
        return f"no cache entries in {root} ({_limit_text()})"
    lines = [f"{'KIND':<9} {'SIZE':>9}  {'LAST USED':<16}  FOR"]
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        what = ("[in use] " if e.kind != "partial" and not _removable(e) else "") + (e.what or "unknown")
        lines.append(f"{e.kind:<9} {fmt_bytes(e.size):>9}  {used:<16}  {what}")
    total = sum(e.size for e in entries)
    lines.append(f"{len(entries)} entries, {fmt_bytes(total)} in {root} ({_limit_text()})")
    return "\n".join(lines)


def _removable(entry: CacheEntry) -> bool:
    """Whether no run holds `entry` (probes the flock without removing anything)."""
    if entry.busy or str(entry.data) in _IN_USE:
        return False
    try:
        fd = os.open(entry.data, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def format_cleared(removed: list[CacheEntry], kept: list[CacheEntry], older_than_days: float | None = None) -> str:
    """`thawline cache clear`: what went, and what stayed because a run is using it."""
    which = f" unused for more than {older_than_days:g} days" if older_than_days is not None else ""
    noun = "entry" if len(removed) == 1 else "entries"
    text = f"removed {len(removed)} cache {noun}{which} ({fmt_bytes(sum(e.size for e in removed))})"
    if kept:
        text += f"; kept {len(kept)} in use ({fmt_bytes(sum(e.size for e in kept))})"
    return text
