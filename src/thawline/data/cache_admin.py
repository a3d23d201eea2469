"""The cache folder as a whole: its size cap (eviction of the least recently used entries), listing and clearing
(`thawline cache ls` / `thawline cache clear`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from thawline.core.atomic import WriteFailed
from thawline.core.errors import ThawlineError
from thawline.data.cache_store import _IN_USE, default_cache_dir

MAX_GB_ENV = "THAWLINE_CACHE_MAX_GB"
DEFAULT_MAX_GB = 20.0
# A temp file without an owner pid (an atomic write's) this old was left by a killed process.
STALE_TEMP_S = 3600.0

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


_FEATURES_KEY = re.compile(  # sources.features: model_sK[_h-HEAD]_vV_imagekey_state (before 0.2: _n_rows after it)
    r"(?P<model>.+)_s(?P<stage>\d+)(?:_h-(?P<head>[^_]+))?_v(?P<views>\d+)_(?P<image>[^_]+)_(?P<state>[^_]+)"
    r"(?:_(?P<n>\d+)_\d+)?"
)


def _describe_features(key: str, images: dict[str, str]) -> str:
    """What a feature cache holds, from its key: sources.features (`_FEATURES_KEY`) or advise
    (advise_model_imagekey_state_amp_n_rows); else the image cache it was computed from, when its key is in it."""

    def of(image_key: str) -> str:
        return re.sub(r"^\d+ images", "images", images.get(image_key) or f"image cache {image_key}")

    if not key.startswith("advise_") and (m := _FEATURES_KEY.fullmatch(key)):
        what = f"{m['model']} features before stage {m['stage']}" + (f" ({m['head']} head)" if m["head"] else "")
        if m["n"]:
            return f"{what}, {m['views']} view(s), {m['n']} images ({of(m['image'])})"
        # today's keys: a row per image of the image cache, whose description counts them
        rows = images.get(m["image"]) or f"image cache {m['image']}"
        return f"{what}, {m['views']} view(s) of its rows ({rows})"
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
