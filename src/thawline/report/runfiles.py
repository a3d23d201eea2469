"""The files of a run, sweep or compare folder as the report reads them: summary.json, metrics.jsonl, config.yaml,
predictions.csv, comparison.json / compare.yaml, trials.csv. Reading never fails on a missing or torn optional file;
it leaves a note instead.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thawline.core.config import read_yaml
from thawline.core.errors import ThawlineError
from thawline.core.runformat import (
    COMPARE_PLAN,
    COMPARISON_JSON,
    CONFIG_FILE,
    EPOCH,
    FOLD_PREFIX,
    METRICS_FILE,
    PLAN,
    PREDICTIONS,
    ROW,
    SUMMARY,
    SUMMARY_FILE,
    SWEEP_SUMMARY,
    TRIALS_CSV,
    trial_dir,
)
from thawline.report.metrics import Predictions, read_predictions
from thawline.report.ranking import comparison_rows, grid_name, rank, row_from_summary, run_subdir
from thawline.report.uncertainty import seed_spread


@dataclass
class RunData:
    """Everything one run folder holds that the report uses; `notes` say what was missing or unreadable."""

    name: str
    run_dir: Path
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    predictions: Predictions | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.summary is not None


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"{path.name} could not be read ({type(e).__name__}); ignored")
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and EPOCH.epoch in row:
            rows.append(row)
    return rows


def _read_yaml(path: Path) -> dict[str, Any] | None:
    """A run's config.yaml or a compare.yaml, through the one YAML reader (it may have been edited: no aliases, a
    bounded size); missing or unreadable is None, the report leaves that section out."""
    if not path.is_file():
        return None
    try:
        data = read_yaml(path, "run file")
    except ThawlineError:
        return None
    return data if isinstance(data, dict) else None


def load_run(run_dir: Path, name: str | None = None) -> RunData:
    run = RunData(name=name or run_dir.name, run_dir=run_dir)
    summary = _read_json(run_dir / SUMMARY_FILE, run.notes)
    run.summary = summary if isinstance(summary, dict) else None
    if run.summary is None:
        run.notes.append("summary.json is missing: the run has not finished")
    else:
        run.name = name or str(run.summary.get(SUMMARY.strategy) or run.name)
    run.metrics = read_metrics(run_dir / METRICS_FILE)
    run.config = _read_yaml(run_dir / CONFIG_FILE)
    pred_path = run_dir / PREDICTIONS
    if pred_path.is_file():
        classes = run.summary.get(SUMMARY.classes) if run.summary else None
        try:
            run.predictions = read_predictions(pred_path, classes)
        except ThawlineError as e:
            run.notes.append(str(e))
    return run


def folder_kind(folder: Path) -> str:
    if not folder.is_dir():
        raise ThawlineError(f"'{folder}' is not a folder; pass a run or compare folder such as runs/compare-1")
    if (folder / SWEEP_SUMMARY).is_file() or (folder / TRIALS_CSV).is_file():
        return "sweep"
    if (folder / COMPARISON_JSON).is_file() or (folder / COMPARE_PLAN).is_file():
        return "compare"
    if (folder / SUMMARY_FILE).is_file() or (folder / METRICS_FILE).is_file():
        return "run"
    raise ThawlineError(
        f"'{folder}' is neither a run folder (summary.json, metrics.jsonl) nor a compare folder "
        "(comparison.json, compare.yaml); pass the folder `thawline train` or `thawline compare` wrote"
    )


def _resolve_subrun(folder: Path, strategy: str, run_dir: str | None) -> Path:
    """The sub-run folder inside `folder` (so a moved compare folder still works), else the recorded path."""
    candidates = [folder / run_subdir(strategy), folder / run_subdir(strategy) / f"{FOLD_PREFIX}1"]
    if run_dir:
        candidates += [folder / Path(run_dir).name, Path(run_dir)]
    for c in candidates:
        if (c / SUMMARY_FILE).is_file() or (c / METRICS_FILE).is_file():
            return c
    return candidates[0]


def read_trials(folder: Path, notes: list[str]) -> list[dict[str, Any]]:
    """trials.csv of a sweep folder (every trial, pruned and failed ones included), by trial number."""
    path = folder / TRIALS_CSV
    if not path.is_file():
        notes.append("trials.csv is missing: the sweep has not finished a trial")
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        try:
            r["number"] = int(r["number"])
        except (KeyError, ValueError):
            notes.append(f"trials.csv: a row without a trial number was ignored: {r}")
            continue
        out.append(r)
    return sorted(out, key=lambda r: r["number"])


def load_folder(folder: Path) -> tuple[str, list[dict[str, Any]], dict[str, RunData], list[str]]:
    """(kind, ranked rows, runs by strategy, notes) for a run or compare folder."""
    kind = folder_kind(folder)
    notes: list[str] = []
    runs: dict[str, RunData] = {}
    if kind == "run":
        run = load_run(folder)
        runs[run.name] = run
        rows = [row_from_summary(run.name, folder, run.summary)] if run.summary else []
        return kind, rank(rows), runs, notes
    if kind == "sweep":
        # Every finished trial is a run folder trial-<n>; pruned trials stopped early and have no summary.
        rows = []
        for trial in read_trials(folder, notes):
            path = folder / trial_dir(trial["number"])
            if not (path / SUMMARY_FILE).is_file():
                continue
            name = f"trial-{trial['number']} {trial.get('strategy') or ''}".strip()
            runs[name] = load_run(path, name)
            if runs[name].summary:
                rows.append(row_from_summary(name, path, runs[name].summary))
        return kind, rank(rows), runs, notes

    table = comparison_rows(_read_json(folder / COMPARISON_JSON, notes))
    spec = _read_yaml(folder / COMPARE_PLAN) or {}
    if isinstance(table, list) and table and all(isinstance(r, dict) and ROW.strategy in r for r in table):
        rows = [dict(r) for r in table]
        for r in rows:
            path = _resolve_subrun(folder, r[ROW.strategy], r.get(ROW.run_dir))
            runs[r[ROW.strategy]] = load_run(path, r[ROW.strategy])
        rows.sort(key=lambda r: r.get(ROW.rank, 0))
    else:
        notes.append("comparison.json is missing: the table is rebuilt from the finished sub-runs")
        names = [str(n) for n in spec.get(PLAN.strategies) or []]
        if spec.get(PLAN.models):  # a model x strategy grid: OUT/<model>/<strategy>
            names = [grid_name(str(m), n) for m in spec[PLAN.models] for n in names]
        else:
            found = [p.name for p in sorted(folder.iterdir()) if (p / SUMMARY_FILE).is_file()]
            names += [n for n in found if n not in names]
        rows = []
        for name in names:
            path = _resolve_subrun(folder, name, None)
            if not path.is_dir():
                notes.append(f"{name}: no run folder yet")
                continue
            run = load_run(path, name)
            runs[name] = run
            if run.summary:
                rows.append(row_from_summary(name, path, run.summary))
        seed_spread(rows, folder, folder_of=run_subdir)
        rows = rank(rows)
    for name, run in runs.items():
        if not run.finished:
            notes.append(f"{name}: not finished (no summary.json in {run.run_dir})")
    return kind, rows, runs, notes


__all__ = [
    "RunData",
    "folder_kind",
    "load_folder",
    "load_run",
    "read_metrics",
    "read_trials",
]
