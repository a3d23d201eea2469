"""report.html (+ PNGs) from a run folder or a compare folder, built only from the files in it; never a model.

    build_report("runs/compare-3")   # -> runs/compare-3/report.html, figures in runs/compare-3/report_files/

The page: comparison table (winner marked), per-strategy loss/accuracy curves with phase boundaries, accuracy vs
wall time / trainable params, and for the best run the confusion matrix, per-class P/R/F1, a prediction grid
(also saved as prediction_grid.png in that run's folder), top losses and calibration; layer drift per stage.
A missing optional file (no predictions.csv, no test split, an image that moved) leaves a note in its section.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from thawline.core.atomic import WriteFailed, atomic_path, write_text_atomic, writing
from thawline.core.config import read_yaml
from thawline.core.errors import ThawlineError
from thawline.data.files import printable
from thawline.data.shift import read_shift
from thawline.report.advice import ADVICE_DIR, FIGURE, SKIPPED_JSON, advice_html, load_advice
from thawline.report.metrics import (
    ClassMetrics,
    Predictions,
    accuracy,
    calibration,
    confusion_matrix,
    most_confused,
    per_class_metrics,
    read_predictions,
)
from thawline.report.plots import (
    GRID_NAME,
    plot_confusion,
    plot_curves,
    plot_layer_drift,
    plot_prediction_grid,
    plot_reliability,
    plot_shift,
    plot_top_losses,
    plot_tradeoffs,
)
from thawline.report.ranking import (
    fmt_pct,
    fmt_seconds,
    grid_name,
    rank,
    report_cells,
    row_from_summary,
    run_subdir,
    shown_columns,
    split_name,
)
from thawline.report.uncertainty import ALPHA, RESAMPLES, Verdict, annotate, fmt_p, seed_spread

FIG_DIR = "report_files"
REPORT_NAME = "report.html"
MOST_CONFUSED = 10  # rows of the best run's most confused pairs


# ---- reading run files -------------------------------------------------------------------------------------


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
        if isinstance(row, dict) and "epoch" in row:
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
    summary = _read_json(run_dir / "summary.json", run.notes)
    run.summary = summary if isinstance(summary, dict) else None
    if run.summary is None:
        run.notes.append("summary.json is missing: the run has not finished")
    else:
        run.name = name or str(run.summary.get("strategy") or run.name)
    run.metrics = read_metrics(run_dir / "metrics.jsonl")
    run.config = _read_yaml(run_dir / "config.yaml")
    pred_path = run_dir / "predictions.csv"
    if pred_path.is_file():
        classes = run.summary.get("classes") if run.summary else None
        try:
            run.predictions = read_predictions(pred_path, classes)
        except ThawlineError as e:
            run.notes.append(str(e))
    return run


def folder_kind(folder: Path) -> str:
    if not folder.is_dir():
        raise ThawlineError(f"'{folder}' is not a folder; pass a run or compare folder such as runs/compare-1")
    if (folder / "sweep_summary.json").is_file() or (folder / "trials.csv").is_file():
        return "sweep"
    if (folder / "comparison.json").is_file() or (folder / "compare.yaml").is_file():
        return "compare"
    if (folder / "summary.json").is_file() or (folder / "metrics.jsonl").is_file():
        return "run"
    raise ThawlineError(
        f"'{folder}' is neither a run folder (summary.json, metrics.jsonl) nor a compare folder "
        "(comparison.json, compare.yaml); pass the folder `thawline train` or `thawline compare` wrote"
    )


def _resolve_subrun(folder: Path, strategy: str, run_dir: str | None) -> Path:
    """The sub-run folder inside `folder` (so a moved compare folder still works), else the recorded path."""
    candidates = [folder / run_subdir(strategy)]
    if run_dir:
        candidates += [folder / Path(run_dir).name, Path(run_dir)]
    for c in candidates:
        if (c / "summary.json").is_file() or (c / "metrics.jsonl").is_file():
            return c
    return candidates[0]


def read_trials(folder: Path, notes: list[str]) -> list[dict[str, Any]]:
    """trials.csv of a sweep folder (every trial, pruned and failed ones included), by trial number."""
    path = folder / "trials.csv"
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


def _trial_display(trials: list[dict[str, Any]]) -> list[dict[str, str]]:
    best = max((float(t["value"]) for t in trials if t.get("state") == "COMPLETE" and t.get("value")), default=None)
    shown = []
    for t in trials:
        try:
            params = json.loads(t.get("params") or "{}")
        except json.JSONDecodeError:
            params = {}
        value = float(t["value"]) if t.get("value") else None
        shown.append(
            {
                "number": str(t["number"]),
                "state": t.get("state", ""),
                "value": fmt_pct(value),
                "test_acc": fmt_pct(float(t["test_acc"])) if t.get("test_acc") else "—",
                "strategy": t.get("strategy") or "",
                "duration": fmt_seconds(float(t["duration_s"])) if t.get("duration_s") else "—",
                "params": ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items() if k != "strategy"
                ),
                "best": value is not None and value == best and t.get("state") == "COMPLETE",
            }
        )
    return shown


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
            path = folder / f"trial-{trial['number']}"
            if not (path / "summary.json").is_file():
                continue
            name = f"trial-{trial['number']} {trial.get('strategy') or ''}".strip()
            runs[name] = load_run(path, name)
            if runs[name].summary:
                rows.append(row_from_summary(name, path, runs[name].summary))
        return kind, rank(rows), runs, notes

    table = _read_json(folder / "comparison.json", notes)
    spec = _read_yaml(folder / "compare.yaml") or {}
    if isinstance(table, list) and table and all(isinstance(r, dict) and "strategy" in r for r in table):
        rows = [dict(r) for r in table]
        for r in rows:
            path = _resolve_subrun(folder, r["strategy"], r.get("run_dir"))
            runs[r["strategy"]] = load_run(path, r["strategy"])
        rows.sort(key=lambda r: r.get("rank", 0))
    else:
        notes.append("comparison.json is missing: the table is rebuilt from the finished sub-runs")
        names = [str(n) for n in spec.get("strategies") or []]
        if spec.get("models"):  # a model x strategy grid: OUT/<model>/<strategy>
            names = [grid_name(str(m), n) for m in spec["models"] for n in names]
        else:
            found = [p.name for p in sorted(folder.iterdir()) if (p / "summary.json").is_file()]
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


# ---- formatting ----------------------------------------------------------------------------------------------


def _phase_lr(p: dict[str, Any]) -> str:
    bn = f" (bn {p['bn']})" if p.get("bn") not in (None, "frozen") else ""
    return f"{float(p.get('lr') or 0):.0e}{bn}"


def _phase_plan(summary: dict[str, Any] | None, full: bool = False) -> str:
    """The phases in one line: 'head ×5 @ 1e-04 → all ×5 @ 1e-05'. Short form (`full=False`, under a strategy's
    name): an LR shared by every phase said once, and a long plan (gradual: one phase per stage) elided in the middle.
    """
    phases = (summary or {}).get("phases") or []
    shared = not full and len(phases) > 1 and len({(p.get("lr"), p.get("bn")) for p in phases}) == 1
    steps = [f"{p.get('train')} ×{p.get('epochs')}" + ("" if shared else f" @ {_phase_lr(p)}") for p in phases]
    if full:
        return " → ".join(steps)
    if len(steps) > 4:
        steps = [*steps[:2], "…", steps[-1]]
    plan = " → ".join(steps) + (f" ({len(phases)} phases)" if len(phases) > 4 else "")
    return plan + (f", each @ {_phase_lr(phases[0])}" if shared else "")


def _display_row(row: dict[str, Any], run: RunData | None, folder: Path, columns: list) -> dict[str, Any]:
    s = (run.summary if run else None) or {}
    run_dir = run.run_dir if run else Path(row.get("run_dir") or folder)
    try:
        href = os.path.relpath(run_dir, folder).replace(os.sep, "/") + "/"
    except ValueError:
        href = run_dir.resolve().as_uri()
    return {
        "rank": row.get("rank"),
        "strategy": row["strategy"],
        "plan": _phase_plan(s),
        "plan_full": _phase_plan(s, full=True),
        "winner": row.get("rank") == 1,
        "tied": row.get("tied") is True,
        "cells": report_cells(row, s, columns),
        "href": href,
    }


def _tie_sentence(verdict: Verdict | None, rows: list[dict[str, Any]]) -> str | None:
    """One sentence under the table: which strategies the winner does not beat significantly."""
    if verdict is None:
        return None
    if verdict.split is None:
        return "No split has per-image predictions of the winner, so whether its lead is significant is untested."
    images = f"the same {verdict.n} {verdict.split} images" if verdict.n else f"the same {verdict.split} images"
    runner_up = ""
    if verdict.p is not None:
        diff = abs(verdict.winner_only - verdict.runner_up_only)
        runner_up = (
            f" The runner-up {verdict.runner_up} differs from the winner by {diff} image{'s' if diff != 1 else ''} "
            f"({verdict.winner_only} vs {verdict.runner_up_only} right only by one of the two), "
            f"p={fmt_p(verdict.p)}."
        )
    p_of = {r["strategy"]: r.get("p_vs_winner") for r in rows}
    if verdict.tied:
        names = ", ".join(f"{n} (p={fmt_p(p_of.get(n))})" for n in verdict.tied)
        return (
            f"Tied with the winner {verdict.winner}: {names}. On {images} their differences from it are not "
            f"significant (exact McNemar test, p ≥ {ALPHA}), so the order among them is not settled.{runner_up}"
        )
    if verdict.p is None and not any(p is not None for p in p_of.values()):
        return None
    return (
        f"The winner {verdict.winner} differs significantly from every other tested strategy on {images} "
        f"(exact McNemar test, p < {ALPHA}).{runner_up}"
    )


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def _run_info(run: RunData, spec_config: dict[str, Any] | None) -> list[tuple[str, str]]:
    s = run.summary or {}
    cfg = run.config or spec_config or {}
    items = [
        ("model", s.get("model") or cfg.get("model")),
        ("weights", s.get("weights") or cfg.get("weights")),
        ("data", cfg.get("data")),
        ("image size", s.get("img_size") or cfg.get("img_size")),
        ("device", s.get("device")),
        ("classes", len(s["classes"]) if s.get("classes") else None),
        (
            "images train / val / test",
            " / ".join(str(s.get(k, "—")) for k in ("num_train", "num_val", "num_test")) if s else None,
        ),
        ("held out of train", ", ".join(f"{k} {v:.0%}" for k, v in (s.get("held_out") or {}).items())),
        ("skipped files", s.get("skipped_files")),
        ("augmentation", _augmentation(cfg)),
        ("seed", cfg.get("seed")),
    ]
    return [(k, str(v)) for k, v in items if v is not None and v != ""]


def _augmentation(cfg: dict[str, Any]) -> str | None:
    """What the train images went through ('flips, crops ≥ 35% of the area'); None for a config without it."""
    if "hflip" not in cfg:
        return None
    parts = ["flips"] if cfg["hflip"] else []
    if float(cfg.get("min_scale") or 1.0) < 1:
        parts.append(f"crops ≥ {float(cfg['min_scale']):.0%} of the area")
    return ", ".join(parts) or "none"


# ---- the page ----------------------------------------------------------------------------------------------


def _best_run_section(run: RunData, figdir: Path) -> dict[str, Any]:
    """Confusion, per-class P/R/F1, prediction grid, top losses and calibration of the best run."""
    out: dict[str, Any] = {"name": run.name, "missing": None, "notes": []}
    preds = run.predictions
    if preds is None:
        why = next((n for n in run.notes if "predictions.csv" in n), None)
        out["missing"] = why or (
            f"predictions.csv is missing in {run.run_dir}: the confusion matrix, per-class metrics, prediction "
            "grid, top losses and calibration need it (it is written when a run finishes)"
        )
        return out
    if len(preds) == 0:
        out["missing"] = f"predictions.csv in {run.run_dir} has no rows"
        return out
    split = preds.split or (run.summary or {}).get("predictions_split") or "?"
    out["split"] = split
    if split != "test":
        out["notes"].append(
            f"predictions are on the {split} split (the data has no test split): the best epoch was chosen on these "
            "images, so the accuracy reads high; --test-split 0.2 holds out a test set"
        )
    out["accuracy"] = fmt_pct(accuracy(preds.labels, preds.preds))
    out["n"] = len(preds)
    cm = confusion_matrix(preds.labels, preds.preds, preds.num_classes)
    plot_confusion(cm, preds.classes, figdir / "confusion.png", f"{run.name} — {split} split")
    out["confusion"] = f"{FIG_DIR}/confusion.png"
    out["confused"] = [
        {"true": preds.classes[t], "predicted": preds.classes[p], "count": n, "share": fmt_pct(share)}
        for t, p, n, share in most_confused(cm, MOST_CONFUSED)
    ]
    cls: ClassMetrics = per_class_metrics(preds.labels, preds.preds, preds.num_classes)
    out["per_class"] = [
        {
            "name": c,
            "precision": fmt_pct(cls.precision[i]),
            "recall": fmt_pct(cls.recall[i]),
            "f1": fmt_pct(cls.f1[i]),
            "support": int(cls.support[i]),
            "weak": cls.f1[i] < 0.5,
        }
        for i, c in enumerate(preds.classes)
    ]
    out["averages"] = [
        {"name": name, **{k: fmt_pct(avg[k]) for k in ("precision", "recall", "f1")}, "support": avg["support"]}
        for name, avg in (("macro avg", cls.macro()), ("weighted avg", cls.weighted()))
    ]
    shown, skipped = plot_prediction_grid(preds, figdir / GRID_NAME)
    if shown:
        out["grid"] = f"{FIG_DIR}/{GRID_NAME}"
        try:
            _copy_atomic(figdir / GRID_NAME, run.run_dir / GRID_NAME)
        except WriteFailed as e:
            out["notes"].append(f"could not write {run.run_dir / GRID_NAME} ({os.strerror(e.errno or 0)})")
    shown_l, skipped_l = plot_top_losses(preds, figdir / "top_losses.png")
    if shown_l:
        out["top_losses"] = f"{FIG_DIR}/top_losses.png"
    if skipped or skipped_l:
        out["notes"].append(
            f"{max(skipped, skipped_l)} image(s) listed in predictions.csv could not be opened (moved or deleted?) "
            "and were left out of the grids"
        )
    if not shown and not shown_l:
        out["notes"].append("none of the images in predictions.csv could be opened, so there are no image grids")
    cal = calibration(preds.confidence, preds.correct)
    plot_reliability(cal, figdir / "reliability.png")
    out["reliability"] = f"{FIG_DIR}/reliability.png"
    out["ece"] = fmt_pct(cal.ece)
    out["ece_value"] = cal.ece
    out["mean_conf"] = fmt_pct(float(preds.confidence.mean()))
    return out


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


_LINE_BREAKS = re.compile(r"([\n\r\t])")


def visible(value: Any) -> Any:
    """Every value the page shows (names, paths, notes, the advisor's HTML): control characters and bidi overrides
    as their escapes (files.printable), so a class or file name cannot hide or reorder text; line breaks and tabs,
    harmless in HTML, stay. A Markup value stays Markup (escaping only controls, it adds no HTML)."""
    if not isinstance(value, str):
        return value
    parts = _LINE_BREAKS.split(value)
    text = "".join(part if i % 2 else printable(part) for i, part in enumerate(parts))
    return Markup(text) if isinstance(value, Markup) else text


def _template():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("thawline.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=visible,  # runs on every {{ value }} before autoescaping
    )
    return env.get_template("report.html")


def render(folder: Path, figdir: Path) -> str:
    """Write every figure into `figdir` and return the page's HTML."""
    kind, rows, runs, notes = load_folder(folder)
    verdict, uncertainty_notes = annotate(rows, {name: run.run_dir for name, run in runs.items()})
    spec = _read_yaml(folder / "compare.yaml") if kind == "compare" else None
    trials = _trial_display(read_trials(folder, [])) if kind == "sweep" else None
    columns = shown_columns(rows)
    display = [_display_row(r, runs.get(r["strategy"]), folder, columns) for r in rows]

    taken: set[str] = set()
    curves = []
    order = [r["strategy"] for r in rows] + [n for n in runs if n not in {r["strategy"] for r in rows}]
    for name in order:
        run = runs.get(name)
        if run is None:
            continue
        item: dict[str, Any] = {
            "name": name, "plan": _phase_plan(run.summary), "plan_full": _phase_plan(run.summary, full=True),
            "notes": list(run.notes),
        }  # fmt: skip
        if run.metrics:
            file = f"curves-{_slug(name, taken)}.png"
            best_epoch = (run.summary or {}).get("best_epoch")
            plot_curves(run.metrics, figdir / file, best_epoch)
            item["image"] = f"{FIG_DIR}/{file}"
        else:
            item["missing"] = f"metrics.jsonl is missing or empty in {run.run_dir}"
        curves.append(item)

    tradeoffs = None
    if rows:
        plot_tradeoffs(rows, figdir / "tradeoffs.png")
        tradeoffs = f"{FIG_DIR}/tradeoffs.png"

    drifts = {
        n: r.summary["layer_drift"] for n in order if (r := runs.get(n)) and r.summary and r.summary.get("layer_drift")
    }
    drift = None
    if drifts:
        plot_layer_drift(drifts, figdir / "layer_drift.png")
        stages = list(dict.fromkeys(s for d in drifts.values() for s in d))
        drift = {
            "image": f"{FIG_DIR}/layer_drift.png",
            "stages": stages,
            "rows": [{"name": n, "cells": [_fmt_drift(d.get(s)) for s in stages]} for n, d in drifts.items()],
        }

    shift = _shift_section(rows, runs, figdir)

    best_name = rows[0]["strategy"] if rows else next(iter(runs), None)
    best = _best_run_section(runs[best_name], figdir) if best_name in runs else None

    first = runs.get(best_name) if best_name else None
    info = _run_info(first, (spec or {}).get("config")) if first else []
    title = f"thawline {({'compare': 'comparison'}).get(kind, kind)}: {folder.resolve().name}"
    skipped = _skipped_rows(folder, notes) if kind == "compare" else []
    return _template().render(
        title=title,
        kind=kind,
        folder=str(folder.resolve()),
        generated=datetime.now().strftime("%Y-%m-%d %H:%M"),
        info=info,
        rows=display,
        headers=[c.header for c in columns],
        halving=_halving_rows(folder, notes) if kind == "compare" else None,
        advice=_advice_section(folder, figdir, [row["name"] for row in skipped]) if kind == "compare" else None,
        skipped=skipped,
        winner=display[0]["strategy"] if display else None,
        ties=_tie_sentence(verdict, rows),
        uncertainty_notes=uncertainty_notes,
        resamples=RESAMPLES,
        notes=notes,
        curves=curves,
        tradeoffs=tradeoffs,
        best=best,
        drift=drift,
        shift=shift,
        has_full=any(split_name(r["strategy"])[1] == "full" for r in rows),
        trials=trials,
    )


def _shift_section(rows: list[dict[str, Any]], runs: dict[str, RunData], figdir: Path) -> dict[str, Any] | None:
    """`compare --shift-test`: test vs shifted accuracy per strategy (figure) and each run's shift.json as a
    table, one column per shifted set, the best per column marked."""
    per_run = {r["strategy"]: read_shift(runs[r["strategy"]].run_dir) for r in rows if r["strategy"] in runs}
    per_run = {name: accs for name, accs in per_run.items() if accs}
    if not per_run:
        return None
    sets = list(dict.fromkeys(s for accs in per_run.values() for s in accs))
    best = {s: max((accs[s] for accs in per_run.values() if s in accs), default=None) for s in sets}
    table = []
    for r in rows:
        accs = per_run.get(r["strategy"])
        if not accs:
            continue
        cells = [{"text": fmt_pct(accs.get(s)), "best": accs.get(s) is not None and accs.get(s) == best[s]}
                 for s in sets]  # fmt: skip
        gap = r.get("shift_gap")
        table.append({
            "name": r["strategy"], "test": fmt_pct(r.get("test_acc")), "cells": cells,
            "mean": fmt_pct(r.get("shifted_acc")), "gap": "—" if gap is None else f"{float(gap) * 100:+.1f} pts",
        })  # fmt: skip
    image = None
    if any(r.get("shifted_acc") is not None and r.get("test_acc") is not None for r in rows):
        plot_shift(rows, figdir / "shift.png")
        image = f"{FIG_DIR}/shift.png"
    return {"image": image, "sets": sets, "rows": table}


def _halving_rows(folder: Path, notes: list[str]) -> dict[str, Any] | None:
    """`compare --halving`: the rungs, the strategy carried to the end, and each stopped strategy with the epoch and
    val accuracy it stopped at."""
    state = _read_json(folder / "halving.json", notes) if (folder / "halving.json").is_file() else None
    if not isinstance(state, dict):
        return None
    stopped = sorted(state.get("stopped", {}).items(), key=lambda kv: (-kv[1]["epoch"], -kv[1]["val_acc"]))
    return {
        "rungs": ", ".join(str(r) for r in state.get("rungs", [])),
        "carried": state.get("carried"),
        "stopped": [{"name": n, "epoch": v["epoch"], "val_acc": fmt_pct(v["val_acc"])} for n, v in stopped],
    }


def _skipped_rows(folder: Path, notes: list[str]) -> list[dict[str, str]]:
    """`compare --advise`: the strategies it did not train because the advisor ranked them far behind, and why."""
    skipped = _read_json(folder / ADVICE_DIR / SKIPPED_JSON, notes)
    return [{"name": n, "why": w} for n, w in skipped.items()] if isinstance(skipped, dict) else []


def _advice_section(folder: Path, figdir: Path, left_out: list[str]) -> str | None:
    """`compare --advise`: the advisor's prediction (made before training) as the report's first section, the
    strategies it left out marked."""
    doc = load_advice(folder / ADVICE_DIR)
    if doc is None:
        return None
    figure = folder / ADVICE_DIR / FIGURE
    if figure.is_file():
        _copy_atomic(figure, figdir / FIGURE)
    return advice_html(doc, f"{FIG_DIR}/{FIGURE}" if figure.is_file() else None, left_out)


def _fmt_drift(v: Any) -> str:
    return "—" if v is None else f"{float(v):.4f}"


def build_report(path: str | Path) -> Path:
    """Write report.html and report_files/*.png into a run or compare folder; return the report's path."""
    folder = Path(path)
    folder_kind(folder)  # one clear line before anything is written
    try:
        tmpdir = Path(tempfile.mkdtemp(dir=folder, prefix=f".{FIG_DIR}."))
    except OSError as e:
        raise WriteFailed(
            folder, e, message=f"cannot write the report into '{folder}' ({e.strerror}); is the folder writable?"
        ) from None
    old = folder / f".{FIG_DIR}.old.{os.getpid()}"
    try:
        try:
            page = render(folder, tmpdir)
        except WriteFailed as e:  # name the figure where it was going, not the hidden folder it was drawn in
            if e.path.parent != tmpdir:
                raise
            cause = OSError(e.errno, os.strerror(e.errno or 0))
            raise WriteFailed(folder / FIG_DIR / e.path.name, cause, "copy the run folder somewhere writable") from None
        final = folder / FIG_DIR
        with writing(final):
            if final.exists():
                final.rename(old)
            tmpdir.rename(final)
        write_text_atomic(folder / REPORT_NAME, page)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder / REPORT_NAME


__all__ = [
    "build_report",
    "load_folder",
    "load_run",
    "render",
]
