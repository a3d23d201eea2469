"""The run folder's files, each written in one place: metrics.jsonl, skipped.csv, and what resume reads back."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import fnmatch
import io
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from thawline.core.atomic import WriteFailed, append_text, write_text_atomic
from thawline.core.config import FIELD_NAMES, PLACE_OPTIONS, option_specs
from thawline.core.errors import ThawlineError
from thawline.core.runformat import (
    COMPARE_FILES,
    COMPARE_PLAN,
    COMPARISON_JSON,
    CONFIG,
    CONFIG_FILE,
    EPOCH,
    FORMAT_ENTRIES,
    LAST_CKPT,
    LOCK_NAME,
    MARKER_KINDS,
    RUN_FILES,
    RUN_FORMAT,
    RUN_MARKER,
    SKIPPED_CSV,
    SUMMARY_FILE,
)
from thawline.data.files import marker_kind, printable
from thawline.training.checkpoint import load_checkpoint

RUNS_PARENT = Path("runs")  # where runs go without --out, relative to the working folder
# What defines a run beyond its options: a resume with other classes or other phases would mix two runs.
DEFINING_DERIVED = (CONFIG.classes, CONFIG.phases)
PATH_OPTIONS = ("data", "strategies_file", "weights")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C in a run or comparison whose folder can be resumed; `resume_command` says how."""

    def __init__(self, folder: str | os.PathLike, command: str = "train") -> None:
        super().__init__(f"interrupted; continue with {command} --resume {folder}")
        self.folder = Path(folder)
        self.command = command

    @property
    def resume_command(self) -> str:
        return f"thawline {self.command} --resume {shlex.quote(str(self.folder))}"


def next_run_dir(parent: Path, stem: str, create: bool = True) -> Path:
    """The first free `parent/stem-N`, created here (mkdir fails when another process took it first, so two
    processes never get one folder). `create=False` (under torchrun, ranks other than 0) only names it."""
    n = 1
    while True:
        folder = parent / f"{stem}-{n}"
        if not create:
            if not folder.exists():
                return folder
        else:
            try:
                folder.mkdir(parents=True)
                return folder
            except FileExistsError:
                pass
            except OSError as e:
                raise WriteFailed(
                    folder, e, message=f"cannot create run folder '{folder}' ({e.strerror}); pass a writable --out"
                ) from None
        n += 1


class RunLock:
    """An exclusive flock on `folder/.thawline.lock` for as long as a process writes the run (or comparison) there:
    a second process is refused in one line instead of interleaving its checkpoints with ours. The kernel drops the
    lock when the process dies (also by SIGKILL), so a crashed run never leaves a stale lock behind."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WriteFailed(
                self.path, e, message=f"cannot write to run folder '{folder}' ({e.strerror}); pass a writable --out"
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            self.release()
            raise ThawlineError(
                f"'{folder}' is in use by another thawline process (pid {holder}); wait for it to finish, or pass "
                "another --out"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (unlinking it would race a new locker)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def unfinished(folder: Path, command: str) -> bool:
    """Whether `folder` holds a stopped run (`train`: last.pt, no summary.json) or comparison (`compare`: compare.yaml,
    no comparison.json)."""
    if command == "compare":
        return (folder / COMPARE_PLAN).is_file() and not (folder / COMPARISON_JSON).exists()
    resumable = (folder / LAST_CKPT).is_file() and (folder / CONFIG_FILE).is_file()
    return resumable and not (folder / SUMMARY_FILE).exists()


def latest_unfinished(command: str, parent: Path = RUNS_PARENT) -> Path:
    """The most recently written unfinished run (or comparison) among `parent`'s folders: what a bare `--resume`
    continues. One line naming `parent` when there is none."""
    found = []
    if parent.is_dir():
        for folder in parent.iterdir():
            if folder.is_dir() and unfinished(folder, command):
                marker = folder / (COMPARE_PLAN if command == "compare" else LAST_CKPT)
                newest = max(f.stat().st_mtime for f in folder.rglob("*") if f.is_file())
                found.append((max(newest, marker.stat().st_mtime), folder.name, folder))
    if not found:
        what = "comparison" if command == "compare" else "run"
        raise ThawlineError(
            f"--resume: no unfinished {what} in '{parent}/'; pass its folder: thawline {command} --resume DIR"
        )
    return max(found)[2]


def write_marker(folder: Path, kind: str) -> None:
    """Mark `folder` as created by thawline (`kind`: run, compare or sweep): what lets --overwrite empty it later
    and keeps discovery from reading it as data."""
    assert kind in MARKER_KINDS, kind
    if marker_kind(folder) != kind:
        write_text_atomic(folder / RUN_MARKER, json.dumps({"kind": kind, "format": RUN_FORMAT}) + "\n")


def in_format(name: str, parent: str = "") -> bool:
    """Whether the format names an entry `name` of a folder named `parent` (`report_files/*.png`)."""
    return any(fnmatch.fnmatchcase(n, p) for n in (name, f"{parent}/{name}") for p in FORMAT_ENTRIES)


def foreign_entries(folder: Path) -> list[str]:
    """The entries below `folder` that thawline's format does not name (a user's files, folders and links), as
    paths relative to `folder`. A sub-folder is thawline's when it is marked (a run inside a comparison), or when
    the format names it or it holds marked runs (a grid's model folder), and everything in it is thawline's."""
    out: list[str] = []

    def visit(d: Path, prefix: str) -> None:
        for entry in sorted(d.iterdir()):
            rel = prefix + entry.name
            if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
                out.append(rel)  # a link could lead anywhere; a pipe or socket is not ours
            elif entry.is_dir():
                ours = marker_kind(entry) or in_format(entry.name, d.name) or _holds_runs(entry)
                if ours:
                    visit(entry, rel + "/")
                else:
                    out.append(rel + "/")
            elif not in_format(entry.name, d.name):
                out.append(rel)

    visit(folder, "")
    return out


def _holds_runs(folder: Path) -> bool:
    return any(e.is_dir() and not e.is_symlink() and marker_kind(e) for e in folder.iterdir())


def named_few(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(printable(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_clearable(folder: Path) -> list[Path]:
    """What --overwrite would remove from `folder` (everything but its lock); refused in one line when thawline did
    not create the folder (no marker) or anything in it is not thawline's (a project folder named by --out keeps
    its .git and data). Called before any work, and again with the lock held."""
    if not folder.is_dir():
        return []
    entries = [e for e in folder.iterdir() if e.name not in (LOCK_NAME, ".write-test")]
    if entries and marker_kind(folder) is None:
        raise ThawlineError(
            f"--overwrite: '{folder}' was not created by thawline (it has no {RUN_MARKER}), so nothing in it is "
            "removed; pass an empty or new --out (a run of a thawline older than the marker: delete it yourself)"
        )
    foreign = foreign_entries(folder) if entries else []
    if foreign:
        raise ThawlineError(
            f"--overwrite: '{folder}' holds {named_few(foreign)}, which thawline did not write; nothing was removed: "
            "move them out, or pass an empty or new --out"
        )
    return entries


def clear_run_folder(folder: Path) -> None:
    """--overwrite: empty a folder thawline created of the entries the run-folder format names, and only those
    (`check_clearable`). Called with the folder's `RunLock` held, which stays. The files that mark a finished or
    resumable run go first and the marker last, so a crash midway leaves a folder that is neither resumed nor
    mistaken for a foreign one: --overwrite again finishes the job."""
    entries = check_clearable(folder)
    rank = {**{n: 0 for n in (*RUN_FILES, COMPARISON_JSON)}, RUN_MARKER: 2}
    try:
        for entry in sorted(entries, key=lambda e: rank.get(e.name, 1)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    except OSError as e:
        raise WriteFailed(folder, e, message=f"--overwrite: cannot empty '{folder}' ({e.strerror})") from None


def make_writable_folder(out: Path) -> None:
    """Create `out` and prove it takes a file, so a bad --out fails before any training."""
    probe_file = out / ".write-test"
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.close(fd)
        probe_file.unlink()
    except OSError as e:
        raise WriteFailed(
            out, e, message=f"cannot write to run folder '{out}' ({e.strerror}); pass a writable --out"
        ) from None


def check_fresh_folder(out: Path, kind: str = "run") -> None:
    """A new run (or comparison) never writes into a folder that holds another (its metrics would go, its best.pt
    stay), nor over a file of the same name that thawline did not write (a project's own config.yaml)."""
    held = next((name for name in (COMPARE_FILES if kind == "compare" else RUN_FILES) if (out / name).exists()), None)
    if held is not None:
        what = "a comparison" if kind == "compare" else "a run"
        raise ThawlineError(
            f"'{out}' holds {what} ({held}); pass --resume to continue it, --overwrite to replace it, or a new --out"
        )
    if out.is_dir() and marker_kind(out) is None:
        clashing = sorted(e.name for e in out.iterdir() if in_format(e.name) and e.name not in (LOCK_NAME, RUN_MARKER))
        if clashing:
            raise ThawlineError(
                f"'{out}' holds {named_few(clashing)}, which thawline did not write and a new {kind} would replace; "
                "pass an empty or new --out"
            )


def claim_folder(
    out: Path, *, resume: bool, overwrite: bool, main: bool = True, kind: str = "run"
) -> contextlib.AbstractContextManager:
    """Rank 0 makes `out`, locks it for this process (the returned context releases it), for a fresh run empties it
    (`overwrite`) or proves it holds no run, and marks it as thawline's (`kind`). Other ranks under torchrun write
    nothing: a no-op context."""
    if not main:
        return contextlib.nullcontext()
    make_writable_folder(out)
    lock = RunLock(out)
    try:
        if overwrite and not resume:
            clear_run_folder(out)
        elif not resume:
            check_fresh_folder(out, kind)
        write_marker(out, kind)
    except BaseException:
        lock.release()
        raise
    return lock


def folder_identity(out: Path) -> tuple[int, int]:
    st = os.stat(out)
    return st.st_dev, st.st_ino


def is_same_folder(out: Path, identity: tuple[int, int] | None) -> bool:
    try:
        return folder_identity(out) == identity
    except OSError:
        return False


def check_same_folder(out: Path, identity: tuple[int, int] | None) -> None:
    """Stop the run when its folder was moved, deleted or replaced while it ran: writing on would put half a run
    into another folder (or fail file by file). What the run had written stays in the moved folder, resumable."""
    if not is_same_folder(out, identity):
        raise ThawlineError(
            f"run folder '{out}' was moved, deleted or replaced while the run was writing it; the run stopped "
            "(what it had written went with the old folder: resume that one with --resume)"
        )


def defining_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The entries of a config (config.yaml, or `TrainConfig.to_dict()`) that define what a run computes: every
    option but the place options (out, workers, cache_dir, device, wandb), plus the classes and phases. A found
    LR (`lr_auto`) counts as `lr: auto`."""
    keys = [k for k in FIELD_NAMES if k not in PLACE_OPTIONS] + list(DEFINING_DERIVED)
    out = {}
    for key in keys:
        if key not in cfg:
            continue  # a run saved before the option existed, or a derived value not known yet
        value = cfg[key]
        if key == CONFIG.lr and (cfg.get(CONFIG.lr_auto) or value == "auto"):
            value = "auto"
        out[key] = json.loads(json.dumps(value))  # tuples as lists, as config.yaml holds them
    return out


def same_option(key: str, saved: Any, new: Any) -> bool:
    if saved == new:
        return True
    if key in PATH_OPTIONS and isinstance(saved, str) and isinstance(new, str):
        return Path(saved).resolve() == Path(new).resolve()
    return False


def first_difference(saved: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """(key, saved value, new value) of the first defining option in which two configs differ, else None."""
    a, b = defining_options(saved), defining_options(new)
    for key, value in a.items():
        if key in b and not same_option(key, value, b[key]):
            return key, value, b[key]
    return None


def option_label(key: str) -> str:
    """How the user names an option: its flag (`--img-size`), else its config.yaml key (`classes`)."""
    flags = {spec.name: spec.flag for spec in option_specs()}
    return flags.get(key, key)


def show(value: Any, limit: int = 60) -> str:
    text = "unset" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def mismatch_message(folder: Path, key: str, saved: Any, new: Any, what: str = "a run") -> str:
    return (
        f"'{folder}' holds {what} trained with {option_label(key)} {show(saved)}, not {show(new)}; resume it "
        f"with its own options or pass a new --out"
    )


def resume_state(out: Path, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """last.pt of the run in `out` when it exists; refused unless its saved config (what config.yaml holds) has the
    same defining options as `resolved`, the new run's config.yaml, so a resume never mixes two runs."""
    if not (out / LAST_CKPT).exists():
        return None
    state = load_checkpoint(out / LAST_CKPT)
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise ThawlineError(f"'{out / 'last.pt'}' records no config to check a resume against; pass a new --out")
    diff = first_difference(saved, resolved)
    if diff is not None:
        raise ThawlineError(mismatch_message(out, *diff))
    return state


def truncate_metrics(path: Path, done_epochs: int) -> list[dict[str, Any]]:
    """Keep the log lines of the epochs the checkpoint holds; a crash mid-epoch leaves no duplicate line."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if row.get(EPOCH.epoch, 0) <= done_epochs:
                rows.append(row)
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """One line appended and fsynced; a failed append leaves no half line, and says so in one line."""
    append_text(path, json.dumps(row) + "\n")


def write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "reason"])
    w.writerows((printable(path), printable(reason)) for path, reason in skipped)  # no raw escapes in a CSV cell
    write_text_atomic(out / SKIPPED_CSV, buf.getvalue())
