"""The run folder's files, each written in one place: metrics.jsonl, skipped.csv, and what resume reads back."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from thawline.checkpoint import load_checkpoint
from thawline.config import TrainConfig, atomic_write_text
from thawline.errors import ThawlineError


def next_run_dir(parent: Path, stem: str) -> Path:
    n = 1
    while (parent / f"{stem}-{n}").exists():
        n += 1
    return parent / f"{stem}-{n}"


def make_writable_folder(out: Path) -> None:
    """Create `out` and prove it takes a file, so a bad --out fails before any training."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe_file = out / ".write-test"
        probe_file.write_text("")
        probe_file.unlink()
    except OSError as e:
        raise ThawlineError(f"cannot write to run folder '{out}' ({e.strerror}); pass a writable --out") from None


def resume_state(out: Path, config: TrainConfig, classes: list[str]) -> dict[str, Any] | None:
    """last.pt of the run in `out` when it exists and was trained with the same model and classes."""
    if not (out / "last.pt").exists():
        return None
    state = load_checkpoint(out / "last.pt")
    saved = state.get("config", {})
    if saved.get("model") != config.model or saved.get("classes") != classes:
        raise ThawlineError(
            f"'{out / 'last.pt'}' was trained with model {saved.get('model')} on {len(saved.get('classes', []))} "
            f"classes; resume with the same --model and data, or use a new --out"
        )
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
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "reason"])
    w.writerows(skipped)
    atomic_write_text(out / "skipped.csv", buf.getvalue())
