"""The one way thawline writes a file: a temp file in the same folder, fsync, rename over the final name.

A reader sees the old file or the new one, never half of one; the temp file goes on any failure, Ctrl-C included.
An `OSError` while writing (disk full, file-size limit, read-only folder, permissions) becomes a `WriteFailed`:
one line naming the file, the cause and what to do, which the CLI prints before exiting with status 1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from thawline.core.errors import ThawlineError

OUT_ELSEWHERE = "pass --out elsewhere"
CACHE_ELSEWHERE = "set THAWLINE_CACHE_DIR (or --cache-dir) elsewhere"

_FULL = "free space or {elsewhere}"
_READ_ONLY = "make the folder writable or {elsewhere}"
_FIXES = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: "over the disk quota; free space or {elsewhere}",
    errno.EFBIG: "a file-size limit (ulimit -f) or the file system caps its size; raise it or {elsewhere}",
    errno.EACCES: _READ_ONLY,
    errno.EPERM: _READ_ONLY,
    errno.EROFS: "the file system is read-only; {elsewhere}",
    errno.ENOENT: "its folder is gone; {elsewhere}",
    errno.ENOTDIR: "a part of the path is a file, not a folder; {elsewhere}",
    errno.EISDIR: "a folder has that name; remove it or {elsewhere}",
    errno.EIO: "the disk reported an I/O error; check it or {elsewhere}",
}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp's 0600 would hide reports from others


class WriteFailed(ThawlineError):
    """A file could not be written; the CLI prints the message as one line and exits with status 1."""

    exit_code = 1

    def __init__(
        self,
        path: str | os.PathLike,
        cause: OSError,
        elsewhere: str = OUT_ELSEWHERE,
        note: str = "",
        message: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.errno = cause.errno
        reason = cause.strerror or (str(cause).splitlines() or [type(cause).__name__])[0]
        fix = _FIXES.get(cause.errno or -1, "check the folder or {elsewhere}").format(elsewhere=elsewhere)
        super().__init__(message or f"cannot write {path}: {reason} ({fix}){note}")


def write_error(path: str | os.PathLike, cause: OSError, elsewhere: str = OUT_ELSEWHERE, note: str = "") -> WriteFailed:
    """The one-line error for `cause`, raised while writing `path`."""
    return WriteFailed(path, cause, elsewhere, note)


@contextlib.contextmanager
def writing(path: str | os.PathLike, elsewhere: str = OUT_ELSEWHERE, note: str = "") -> Iterator[None]:
    """Any `OSError` in the block becomes the one-line `WriteFailed` naming `path` (for writes that are not whole
    files: folders, renames, appends, event files)."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as e:
        raise write_error(path, e, elsewhere, note) from None


def os_error_behind(e: BaseException) -> OSError | None:
    """The OSError a writer's own error was raised while handling (torch.save's zip writer turns a failed write into
    a RuntimeError about a file position), or None."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError):
            return e
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        seen += 1
    return None


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some file systems refuse fsync on a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp(path: Path) -> tuple[int, Path]:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _MODE)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, elsewhere: str = OUT_ELSEWHERE, note: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer that takes a file name (savefig, onnx export, copyfile); when the
    block ends the temp file is fsynced and renamed to `path`. On any failure it is removed and `path` untouched."""
    path = Path(path)
    tmp: Path | None = None
    try:
        fd, tmp = _temp(path)
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise write_error(path, e, elsewhere, note) from None
    except ThawlineError:
        raise
    except Exception as e:
        cause = os_error_behind(e)
        if cause is None:
            raise
        raise write_error(path, cause, elsewhere, note) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike,
    mode: str = "wb",
    encoding: str | None = None,
    elsewhere: str = OUT_ELSEWHERE,
    note: str = "",
) -> Iterator[IO[Any]]:
    """Yield an open temp file beside `path` (`mode` "wb" or "w"); when the block ends it is flushed, fsynced and
    renamed to `path`. On any failure, Ctrl-C included, the temp file is removed and `path` left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a whole file: mode 'w' or 'wb', not '{mode}'")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, elsewhere, note) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f
        f.flush()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, elsewhere: str = OUT_ELSEWHERE) -> None:
    with atomic_file(path, "wb", elsewhere=elsewhere) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, elsewhere: str = OUT_ELSEWHERE) -> None:
    with atomic_file(path, "w", elsewhere=elsewhere) as f:
        f.write(text)


def append_text(path: str | os.PathLike, text: str, elsewhere: str = OUT_ELSEWHERE) -> None:
    """Append `text` (whole lines) and fsync. A failed append is cut off again: the file never keeps half a line."""
    path = Path(path)
    data = text.encode("utf-8")
    with writing(path, elsewhere):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _MODE)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, elsewhere: str = OUT_ELSEWHERE) -> Iterator[Path]:
    """A whole folder written as one: fill the yielded temp folder (beside `out`); on success it replaces `out`
    (the old one is kept until the new one is in place), on any failure it is removed and `out` is left as it was.
    An `OSError` becomes the one line naming `out`."""
    out = Path(out)
    with writing(out, elsewhere):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        yield tmp
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        _fsync_dir(out.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        if isinstance(e, OSError):  # disk full, file-size limit, read-only folder: one line naming the folder
            raise write_error(out, e, elsewhere) from None
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
