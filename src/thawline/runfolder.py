"""The run folder's files, each written in one place: metrics.jsonl, skipped.csv, and what resume reads back."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
from pathlib import Path
from typing import Any

from thawline.atomic import WriteFailed, append_text
from thawline.checkpoint import load_checkpoint
from thawline.config import FIELD_NAMES, PLACE_OPTIONS, atomic_write_text, option_specs
from thawline.errors import ThawlineError

# Files that say a folder holds a run (partial: last.pt; finished: summary.json): a fresh run never writes there.
RUN_FILES = ("last.pt", "summary.json")
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


def next_run_dir(parent: Path, stem: str) -> Path:
    n = 1
    while (parent / f"{stem}-{n}").exists():
        n += 1
    return parent / f"{stem}-{n}"


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
        raise ThawlineError(f"'{out}' holds a run ({held}); pass --resume to continue it or a new --out")


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
