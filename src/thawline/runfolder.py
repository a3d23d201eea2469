"""The run folder's files, each written in one place: metrics.jsonl, skipped.csv, and what resume reads back."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from thawline.atomic import WriteFailed, append_text
from thawline.checkpoint import load_checkpoint
from thawline.config import FIELD_NAMES, PLACE_OPTIONS, atomic_write_text, option_specs
from thawline.errors import ThawlineError

# Files that say a folder holds a run (partial: last.pt; finished: summary.json): a fresh run never writes there.
RUN_FILES = ("last.pt", "summary.json")
# What a compare folder holds (comparison.json once finished); --overwrite clears a folder only when it holds these.
COMPARE_FILES = ("compare.yaml", "comparison.json")
RUNS_PARENT = Path("runs")  # where runs go without --out, relative to the working folder
LOCK_NAME = ".thawline.lock"
# What defines a run beyond its options: a resume with other classes or other phases would mix two runs.
DEFINING_DERIVED = ("classes", "phases")
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
        return (folder / "compare.yaml").is_file() and not (folder / "comparison.json").exists()
    resumable = (folder / "last.pt").is_file() and (folder / "config.yaml").is_file()
    return resumable and not (folder / "summary.json").exists()


def latest_unfinished(command: str, parent: Path = RUNS_PARENT) -> Path:
    """The most recently written unfinished run (or comparison) among `parent`'s folders: what a bare `--resume`
    continues. One line naming `parent` when there is none."""
    found = []
    if parent.is_dir():
        for folder in parent.iterdir():
            if folder.is_dir() and unfinished(folder, command):
                marker = folder / ("compare.yaml" if command == "compare" else "last.pt")
                newest = max(f.stat().st_mtime for f in folder.rglob("*") if f.is_file())
                found.append((max(newest, marker.stat().st_mtime), folder.name, folder))
    if not found:
        what = "comparison" if command == "compare" else "run"
        raise ThawlineError(
            f"--resume: no unfinished {what} in '{parent}/'; pass its folder: thawline {command} --resume DIR"
        )
    return max(found)[2]


def clear_run_folder(folder: Path) -> None:
    """--overwrite: empty a folder that holds a run or a comparison, and only such a folder (never a folder of other
    files that --out happened to name). Called with the folder's `RunLock` held, which stays. The files that mark a
    finished or resumable run go first and the config last, so a crash midway leaves a folder that is neither
    resumed nor mistaken for an empty one: --overwrite again finishes the job."""
    if not folder.is_dir():
        return
    marks = (*RUN_FILES, "comparison.json")
    configs = ("config.yaml", "compare.yaml")
    entries = [e for e in folder.iterdir() if e.name != LOCK_NAME]
    if entries and not any((folder / name).exists() for name in (*marks, *configs)):
        raise ThawlineError(f"--overwrite: '{folder}' holds files but no thawline run; pass an empty or new --out")
    rank = {**{n: 0 for n in marks}, **{n: 2 for n in configs}}
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


def check_fresh_folder(out: Path) -> None:
    """A new run never writes into a folder that holds another run (its metrics would go, its best.pt stay)."""
    held = next((name for name in RUN_FILES if (out / name).exists()), None)
    if held is not None:
        raise ThawlineError(
            f"'{out}' holds a run ({held}); pass --resume to continue it, --overwrite to replace it, or a new --out"
        )


def claim_folder(out: Path, *, resume: bool, overwrite: bool, main: bool = True) -> contextlib.AbstractContextManager:
    """Rank 0 makes `out`, locks it for this process (the returned context releases it) and, for a fresh run, empties
    it (`overwrite`) or proves it holds no run. Other ranks under torchrun write nothing: a no-op context."""
    if not main:
        return contextlib.nullcontext()
    make_writable_folder(out)
    lock = RunLock(out)
    try:
        if overwrite and not resume:
            clear_run_folder(out)
        elif not resume:
            check_fresh_folder(out)
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
        if key == "lr" and (cfg.get("lr_auto") or value == "auto"):
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
    if not (out / "last.pt").exists():
        return None
    state = load_checkpoint(out / "last.pt")
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
            if row.get("epoch", 0) <= done_epochs:
                rows.append(row)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """One line appended and fsynced; a failed append leaves no half line, and says so in one line."""
    append_text(path, json.dumps(row) + "\n")


def write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "reason"])
    w.writerows(skipped)
    atomic_write_text(out / "skipped.csv", buf.getvalue())
