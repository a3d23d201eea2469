"""The report's sections as template values: the table's rows, phase plans, run info, the tie sentence, and the
sections that draw their figures (best run, shift test, halving, the advisor's), each figure written into the
figure folder.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from thawline.core.atomic import WriteFailed, atomic_path
from thawline.core.runformat import (
    COMPARISON_JSON,
    CONFIG,
    COUNT_KEYS,
    FIG_DIR,
    HALVING_JSON,
    PREDICTIONS,
    ROW,
    SUMMARY,
)
from thawline.data.shift import read_shift
from thawline.report.advice import ADVICE_DIR, FIGURE, SKIPPED_JSON, advice_html, load_advice
from thawline.report.crossval import answer_line
from thawline.report.metrics import (
    ClassMetrics,
    accuracy,
    calibration,
    confusion_matrix,
    most_confused,
    per_class_metrics,
)
from thawline.report.plots_compare import plot_shift
from thawline.report.plots_predictions import (
    GRID_NAME,
    plot_confusion,
    plot_prediction_grid,
    plot_reliability,
    plot_top_losses,
)
from thawline.report.ranking import fmt_pct, fmt_seconds, report_cells
from thawline.report.runfiles import RunData, _read_json
from thawline.report.uncertainty import ALPHA, Verdict, fmt_p

MOST_CONFUSED = 10  # rows of the best run's most confused pairs


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


# ---- formatting ----------------------------------------------------------------------------------------------


def _phase_lr(p: dict[str, Any]) -> str:
    bn = f" (bn {p['bn']})" if p.get("bn") not in (None, "frozen") else ""
    return f"{float(p.get('lr') or 0):.0e}{bn}"


def _phase_plan(summary: dict[str, Any] | None, full: bool = False) -> str:
    """The phases in one line: 'head ×5 @ 1e-04 → all ×5 @ 1e-05'. Short form (`full=False`, under a strategy's
    name): an LR shared by every phase said once, and a long plan (gradual: one phase per stage) elided in the middle.
    """
    phases = (summary or {}).get(SUMMARY.phases) or []
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
    run_dir = run.run_dir if run else Path(row.get(ROW.run_dir) or folder)
    try:
        href = os.path.relpath(run_dir, folder).replace(os.sep, "/") + "/"
    except ValueError:
        href = run_dir.resolve().as_uri()
    return {
        "rank": row.get(ROW.rank),
        "strategy": row[ROW.strategy],
        "plan": _phase_plan(s),
        "plan_full": _phase_plan(s, full=True),
        "winner": row.get(ROW.rank) == 1,
        "tied": row.get(ROW.tied) is True,
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
    p_of = {r[ROW.strategy]: r.get(ROW.p_vs_winner) for r in rows}
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
        ("model", s.get(SUMMARY.model) or cfg.get(CONFIG.model)),
        ("weights", s.get(SUMMARY.weights) or cfg.get(CONFIG.weights)),
        ("data", cfg.get(CONFIG.data)),
        ("image size", s.get(SUMMARY.img_size) or cfg.get(CONFIG.img_size)),
        ("device", s.get(SUMMARY.device)),
        ("classes", len(s[SUMMARY.classes]) if s.get(SUMMARY.classes) else None),
        (
            "images train / val / test",
            " / ".join(str(s.get(k, "—")) for k in COUNT_KEYS.values()) if s else None,
        ),
        ("held out of train", ", ".join(f"{k} {v:.0%}" for k, v in (s.get(SUMMARY.held_out) or {}).items())),
        ("skipped files", s.get(SUMMARY.skipped_files)),
        ("augmentation", _augmentation(cfg)),
        ("seed", cfg.get(CONFIG.seed)),
    ]
    return [(k, str(v)) for k, v in items if v is not None and v != ""]


def _augmentation(cfg: dict[str, Any]) -> str | None:
    """What the train images went through ('flips, crops ≥ 35% of the area'); None for a config without it."""
    if CONFIG.hflip not in cfg:
        return None
    parts = ["flips"] if cfg[CONFIG.hflip] else []
    if float(cfg.get(CONFIG.min_scale) or 1.0) < 1:
        parts.append(f"crops ≥ {float(cfg[CONFIG.min_scale]):.0%} of the area")
    return ", ".join(parts) or "none"


# ---- the page ----------------------------------------------------------------------------------------------


def _best_run_section(run: RunData, figdir: Path) -> dict[str, Any]:
    """Confusion, per-class P/R/F1, prediction grid, top losses and calibration of the best run."""
    out: dict[str, Any] = {"name": run.name, "missing": None, "notes": []}
    preds = run.predictions
    if preds is None:
        why = next((n for n in run.notes if PREDICTIONS in n), None)
        out["missing"] = why or (
            f"predictions.csv is missing in {run.run_dir}: the confusion matrix, per-class metrics, prediction "
            "grid, top losses and calibration need it (it is written when a run finishes)"
        )
        return out
    if len(preds) == 0:
        out["missing"] = f"predictions.csv in {run.run_dir} has no rows"
        return out
    split = preds.split or (run.summary or {}).get(SUMMARY.predictions_split) or "?"
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


def _shift_section(rows: list[dict[str, Any]], runs: dict[str, RunData], figdir: Path) -> dict[str, Any] | None:
    """`compare --shift-test`: test vs shifted accuracy per strategy (figure) and each run's shift.json as a
    table, one column per shifted set, the best per column marked."""
    per_run = {r[ROW.strategy]: read_shift(runs[r[ROW.strategy]].run_dir) for r in rows if r[ROW.strategy] in runs}
    per_run = {name: accs for name, accs in per_run.items() if accs}
    if not per_run:
        return None
    sets = list(dict.fromkeys(s for accs in per_run.values() for s in accs))
    best = {s: max((accs[s] for accs in per_run.values() if s in accs), default=None) for s in sets}
    table = []
    for r in rows:
        accs = per_run.get(r[ROW.strategy])
        if not accs:
            continue
        cells = [{"text": fmt_pct(accs.get(s)), "best": accs.get(s) is not None and accs.get(s) == best[s]}
                 for s in sets]  # fmt: skip
        gap = r.get(ROW.shift_gap)
        table.append({
            "name": r[ROW.strategy], "test": fmt_pct(r.get(ROW.test_acc)), "cells": cells,
            "mean": fmt_pct(r.get(ROW.shifted_acc)), "gap": "—" if gap is None else f"{float(gap) * 100:+.1f} pts",
        })  # fmt: skip
    image = None
    if any(r.get(ROW.shifted_acc) is not None and r.get(ROW.test_acc) is not None for r in rows):
        plot_shift(rows, figdir / "shift.png")
        image = f"{FIG_DIR}/shift.png"
    return {"image": image, "sets": sets, "rows": table}


def model_folders(folder: Path) -> list[tuple[str | None, Path]]:
    """Where a comparison keeps the files of each race and advisor pass: its own folder, and in a model grid each
    model's (OUT/<model>/halving.json, OUT/<model>/advise/), named by that folder."""
    grid = [
        (p.name, p)
        for p in sorted(folder.iterdir())
        if p.is_dir() and not p.is_symlink() and ((p / HALVING_JSON).is_file() or (p / ADVICE_DIR).is_dir())
    ]
    return [(None, folder), *grid]


def _halving_rows(folder: Path, notes: list[str]) -> list[dict[str, Any]]:
    """`compare --halving`, one entry a race (one a model in a grid): the rungs, the strategy carried to the end,
    and each stopped strategy with the epoch and val accuracy it stopped at."""
    races = []
    for model, where in model_folders(folder):
        state = _read_json(where / HALVING_JSON, notes) if (where / HALVING_JSON).is_file() else None
        if not isinstance(state, dict):
            continue
        stopped = sorted(state.get("stopped", {}).items(), key=lambda kv: (-kv[1]["epoch"], -kv[1]["val_acc"]))
        races.append({
            "model": model,
            "rungs": ", ".join(str(r) for r in state.get("rungs", [])),
            "carried": state.get("carried"),
            "stopped": [{"name": n, "epoch": v["epoch"], "val_acc": fmt_pct(v["val_acc"])} for n, v in stopped],
        })  # fmt: skip
    return races


def _skipped_rows(folder: Path, notes: list[str]) -> list[dict[str, str]]:
    """`compare --advise`: the strategies it did not train because the advisor ranked them far behind, and why
    ("model / strategy" in a grid)."""
    rows = []
    for model, where in model_folders(folder):
        skipped = _read_json(where / ADVICE_DIR / SKIPPED_JSON, notes)
        if isinstance(skipped, dict):
            rows += [{"name": f"{model} / {n}" if model else n, "model": model, "strategy": n, "why": w}
                     for n, w in skipped.items()]  # fmt: skip
    return rows


def _advice_section(folder: Path, figdir: Path, skipped: list[dict[str, str]]) -> str | None:
    """`compare --advise`: the advisor's prediction (made before training) as the report's first section, the
    strategies it left out marked; in a grid one section a model, headed by its name."""
    sections = []
    for model, where in model_folders(folder):
        doc = load_advice(where / ADVICE_DIR)
        if doc is None:
            continue
        figure, name = where / ADVICE_DIR / FIGURE, f"{model}-{FIGURE}" if model else FIGURE
        if figure.is_file():
            _copy_atomic(figure, figdir / name)
        left_out = [s["strategy"] for s in skipped if s["model"] == model]
        anchor = f"advice-{re.sub(r'[^A-Za-z0-9_-]+', '-', model)}" if model else "advice"
        section = advice_html(doc, f"{FIG_DIR}/{name}" if figure.is_file() else None, left_out, anchor)
        sections.append(f"<h2>{html.escape(model)}</h2>\n{section}" if model else section)
    return "\n".join(sections) or None


def _fmt_drift(v: Any) -> str:
    return "—" if v is None else f"{float(v):.4f}"


def crossval_section(folder: Path) -> dict[str, Any] | None:
    """The answer of a cross-validated comparison (comparison.json's `answer` and `race`), or None for any other."""
    try:
        doc = json.loads((folder / COMPARISON_JSON).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("answer"), dict):
        return None
    answer, race = doc["answer"], doc.get("race") or {}
    stopped = sorted((race.get("stopped") or {}).items(), key=lambda kv: kv[1].get("after_fold", 0))
    test = answer.get("test_acc")
    single = answer.get("single") or {}
    note = (f"On the test split, measured once at the end: the answer {fmt_pct(test)}, {single.get('strategy')} "
            f"alone {fmt_pct(single.get('test_acc'))}." if test is not None else
            "The data has no test split: the out-of-fold accuracy is the estimate.")  # fmt: skip
    return {
        "headline": answer_line(answer).removeprefix("answer: "),
        "folds": doc.get("folds"),
        "passes": answer.get("forward_passes"),
        "test_note": note,
        "min_folds": race.get("min_folds"),
        "stopped": [{"name": n, "after_fold": d.get("after_fold"), "why": d.get("why")} for n, d in stopped],
        "refit": doc.get("refit") if isinstance(doc.get("refit"), dict) else None,
        "pick": single.get("strategy"),
    }
