"""report.html (+ PNGs) from a run folder or a compare folder, built only from the files in it; never a model.

    build_report("runs/compare-3")   # -> runs/compare-3/report.html, figures in runs/compare-3/report_files/

The page: comparison table (winner marked), per-strategy loss/accuracy curves with phase boundaries, accuracy vs
wall time / trainable params, and for the best run the confusion matrix, per-class P/R/F1, a prediction grid
(also saved as prediction_grid.png in that run's folder), top losses and calibration; layer drift per stage.
A missing optional file (no predictions.csv, no test split, an image that moved) leaves a note in its section.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from thawline.core.atomic import WriteFailed, write_text_atomic, writing
from thawline.core.runformat import COMPARE_PLAN, FIG_DIR, PLAN, REPORT_NAME, ROW, SUMMARY
from thawline.data.files import printable
from thawline.report.plots import plot_curves
from thawline.report.plots_compare import plot_layer_drift, plot_tradeoffs
from thawline.report.ranking import shown_columns, split_name
from thawline.report.runfiles import _read_yaml, folder_kind, load_folder, read_trials
from thawline.report.sections import (
    _advice_section,
    _best_run_section,
    _display_row,
    _fmt_drift,
    _halving_rows,
    _phase_plan,
    _run_info,
    _shift_section,
    _skipped_rows,
    _slug,
    _tie_sentence,
    _trial_display,
    crossval_section,
)
from thawline.report.uncertainty import RESAMPLES, annotate

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
    return env.get_template("report.html")  # the template, named as the page it renders


def _curves(order: list[str], runs: dict[str, Any], figdir: Path) -> list[dict[str, Any]]:
    """Each run's train/val curves figure (in `order`), its phase plan and notes."""
    taken: set[str] = set()
    curves = []
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
            best_epoch = (run.summary or {}).get(SUMMARY.best_epoch)
            plot_curves(run.metrics, figdir / file, best_epoch)
            item["image"] = f"{FIG_DIR}/{file}"
        else:
            item["missing"] = f"metrics.jsonl is missing or empty in {run.run_dir}"
        curves.append(item)
    return curves


def render(folder: Path, figdir: Path) -> str:
    """Write every figure into `figdir` and return the page's HTML."""
    kind, rows, runs, notes = load_folder(folder)
    crossval = crossval_section(folder) if kind == "compare" else None
    if crossval is None:
        verdict, uncertainty_notes = annotate(rows, {name: run.run_dir for name, run in runs.items()})
    else:  # the ties of a cross-validated comparison are on its out-of-fold predictions, in comparison.json
        verdict, uncertainty_notes = None, []
    spec = _read_yaml(folder / COMPARE_PLAN) if kind == "compare" else None
    trials = _trial_display(read_trials(folder, [])) if kind == "sweep" else None
    columns = shown_columns(rows)
    display = [_display_row(r, runs.get(r[ROW.strategy]), folder, columns) for r in rows]

    order = [r[ROW.strategy] for r in rows] + [n for n in runs if n not in {r[ROW.strategy] for r in rows}]
    curves = _curves(order, runs, figdir)

    tradeoffs = None
    if rows:
        plot_tradeoffs(rows, figdir / "tradeoffs.png")
        tradeoffs = f"{FIG_DIR}/tradeoffs.png"

    drifts = {
        n: r.summary[SUMMARY.layer_drift]
        for n in order
        if (r := runs.get(n)) and r.summary and r.summary.get(SUMMARY.layer_drift)
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

    best_name = rows[0][ROW.strategy] if rows else next(iter(runs), None)
    best = _best_run_section(runs[best_name], figdir) if best_name in runs else None

    first = runs.get(best_name) if best_name else None
    info = _run_info(first, (spec or {}).get(PLAN.config)) if first else []
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
        halving=_halving_rows(folder, notes) if kind == "compare" else [],
        advice=_advice_section(folder, figdir, skipped) if kind == "compare" else None,
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
        has_full=any(split_name(r[ROW.strategy])[1] == "full" for r in rows),
        trials=trials,
        crossval=crossval,
    )


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
    "render",
]
