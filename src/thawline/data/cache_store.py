"""The caches' storage: fixed-size rows in a file on disk, the in-use set and shared locks, and the keys.

Rows are read with pread (not mmap) so the page cache, not the process, holds the data: resident memory
stays flat whatever the dataset size. A cache is written to a temp file and renamed into place with its
metadata last, so a killed build (or Ctrl-C) is never read back; its key covers everything that changes its contents,
the bytes of every image file included. The cache folder is capped (THAWLINE_CACHE_MAX_GB, default 20): entries are
touched when used and the least recently used go first, never one that a run still reads (`cache_admin`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from thawline.core.atomic import WriteFailed, write_text_atomic
from thawline.core.errors import ThawlineError

CACHE_VERSION = 3  # 2: image keys cover the files' bytes, not only their size and mtime; 3: large JPEGs decoded scaled
# A file changed this recently may change again within its clock tick unseen by stat: its content hash is not memoised.
RACY_S = 2.0

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
