"""The comparison table: its columns declared once, rows read from summary.json, one ranking, and its formats.

`thawline compare` (comparison.csv/json and the console table) and the report (its HTML table) both build their
rows with `row_from_summary` and order them with `rank`. A new column is one `Column` entry below, reading a key
that the run's summary.json holds: it then appears in comparison.csv/json, in the console table when it has a
`cli` format, and in the report's table. The accuracy intervals of old run folders and the marks of strategies
tied with the winner come from the runs' per-image predictions (`uncertainty.annotate`, after `rank`). No torch
here: the report imports this module.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thawline.core.atomic import write_text_atomic
from thawline.core.runformat import COMPARISON_CSV, COMPARISON_JSON, ROW, SUMMARY
from thawline.data.names import folder_name
from thawline.report.uncertainty import ALPHA, RESAMPLES, SPLIT_KEYS, fmt_p

Row = dict[str, Any]
Summary = dict[str, Any]

# `compare --models a,b`: a row per (model, strategy), named "a / partial", its run in OUT/a/partial.
GRID_SEP = " / "


def grid_name(model: str, strategy: str) -> str:
    return f"{model}{GRID_SEP}{strategy}"


def split_name(name: str) -> tuple[str | None, str]:
    """(model, strategy) of a row name: (None, name) outside a model grid."""
    model, sep, strategy = name.partition(GRID_SEP)
    return (model, strategy) if sep else (None, name)


def model_folder(model: str) -> str:
    return folder_name(model)


def run_subdir(name: str) -> str:
    """A row's run folder inside its compare folder: `partial-2_3`, or `<model>/partial-2_3` in a model grid."""
    model, strategy = split_name(name)
    folder = folder_name(strategy)
    return f"{model_folder(model)}/{folder}" if model else folder


# ---- value formats (console and report) ---------------------------------------------------------------------


def fmt_pct(x: Any, digits: int = 1) -> str:
    if x is None or math.isnan(float(x)):
        return "—"
    return f"{float(x):.{digits}%}"


def fmt_interval(ci: Any, sep: str = "–", unit: str = "%") -> str:
    """[lo, hi] as '76.5–92.6%'; '—' when missing."""
    if not ci:
        return "—"
    lo, hi = ci
    return f"{float(lo) * 100:.1f}{sep}{float(hi) * 100:.1f}{unit}"


def fmt_seconds(s: Any) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def fmt_count(n: Any) -> str:
    if n is None:
        return "—"
    n = float(n)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.3g}{unit}"
    return f"{n:.0f}"


def fmt_mb(mb: Any) -> str:
    if mb is None:
        return "—"
    mb = float(mb)
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def fmt_rate(x: Any) -> str:
    return "—" if x is None else f"{float(x):,.0f}"


def _console(fmt: str) -> Callable[[Any], str]:
    """A console-table format: `-` for a missing value."""
    return lambda v: "-" if v is None else format(v, fmt)


def _console_interval(ci: Any) -> str:
    return "-" if not ci else fmt_interval(ci, "-", "")


def fmt_phase_counts(counts: list[int], arrow: str = " → ") -> str:
    """Trainable parameters per phase, short: '15.4k → 3.39M', '15.4k → 3.39M (9 phases)' for a long plan."""
    if not counts:
        return "—"
    if len(set(counts)) == 1:
        return fmt_count(counts[0])
    more = f" ({len(counts)} phases)" if len(counts) > 2 else ""
    return f"{fmt_count(counts[0])}{arrow}{fmt_count(counts[-1])}{more}"


def _console_params(per_phase: Any) -> str:
    """summary's '15372/1032972/.../3386380' as one short console cell."""
    counts = [int(n) for n in str(per_phase or "").split("/") if n]
    return fmt_phase_counts(counts, arrow="→") if counts else "-"


def fmt_seed_spread(v: Any, unit: str = "%", of: str = "seeds") -> str:
    """[mean, std, n] as '91.2 ± 0.4% (3 seeds)'; '—' with one seed."""
    if not v:
        return "—"
    mean, std, n = v
    return f"{mean * 100:.1f} ± {std * 100:.1f}{unit} ({n} {of})"


def _console_seeds(v: Any) -> str:
    return "-" if not v else f"{v[0] * 100:.1f}±{v[1] * 100:.1f}"


def _console_tied(tied: Any) -> str:
    return "-" if tied is None else ("tied" if tied else "no")


# ---- report cells -----------------------------------------------------------------------------------------------


@dataclass
class Cell:
    text: str
    title: str = ""
    css: str = ""
    note: str = ""  # a small grey addition after the text


def _params_cell(row: Row, s: Summary) -> Cell:
    per_phase = s.get(SUMMARY.trainable_params) or [
        int(n) for n in str(row.get(ROW.trainable_params) or "").split("/") if n
    ]
    total = s.get(SUMMARY.total_params)
    exact = " / ".join(f"{n:,}" for n in per_phase)
    return Cell(
        fmt_phase_counts(per_phase),
        f"{exact} of {total:,} parameters" if total else exact,
        note=f"({fmt_pct(max(per_phase) / total, 1)})" if per_phase and total else "",
    )


def _memory_cell(row: Row, s: Summary) -> Cell:
    memory = fmt_mb(row.get(ROW.peak_rss_mb))
    if s.get(SUMMARY.peak_gpu_mb):
        memory += f" · GPU {fmt_mb(s[SUMMARY.peak_gpu_mb])}"
    return Cell(memory)


def _saved_cell(row: Row, s: Summary) -> Cell:
    vs = row.get(ROW.time_vs_full)
    if split_name(row[ROW.strategy])[1] == "full":
        return Cell("baseline")
    if vs is None:
        return Cell("—")
    return Cell(f"{-float(vs):.0%}", css="good" if vs < 0 else "bad")


def _interval_cell(split: str) -> Callable[[Row, Summary], Cell]:
    key = SPLIT_KEYS[split]

    def cell(row: Row, s: Summary) -> Cell:
        ci = row.get(key)
        title = (
            f"95% percentile bootstrap interval ({RESAMPLES} resamples of the {split} images) of the best weights' "
            f"{split} accuracy"
        )
        return Cell(fmt_interval(ci), title if ci else f"no per-image {split} predictions in this run folder")

    return cell


def _versus(row: Row) -> str:
    return (f"from the winner on the same {row.get(ROW.tie_split)} images (exact McNemar test, Holm-adjusted over the "
            "strategies tested against the winner)")  # fmt: skip


def _p_cell(row: Row, s: Summary) -> Cell:
    p = row.get(ROW.p_vs_winner)
    if p is None:
        return Cell("—", "the winner itself" if row.get(ROW.rank) == 1 else "untested: no paired predictions")
    return Cell(fmt_p(p), f"p-value of its difference {_versus(row)}")


def _tied_cell(row: Row, s: Summary) -> Cell:
    tied = row.get(ROW.tied)
    if tied is None:
        return Cell("—", "the winner itself" if row.get(ROW.rank) == 1 else "untested: no paired predictions")
    if tied:
        return Cell("tied", f"not significantly different {_versus(row)}: p ≥ {ALPHA}")
    return Cell("no", f"significantly different {_versus(row)}: p < {ALPHA}")


# ---- the columns ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of the comparison table."""

    key: str  # in comparison.csv/json, and the summary.json key it is read from (unless `value` is given)
    header: str  # report header
    value: Callable[[Summary], Any] | None = None  # how to read it from summary.json (default: summary[key])
    cli: tuple[str, int, Callable[[Any], str]] | None = None  # (header, width, format) in the console table
    cell: Callable[[Row, Summary], Cell] | None = None  # the report's cell (default: `text(row[key])`)
    text: Callable[[Any], str] = str
    optional: bool = False  # shown only when some row has a value (e.g. the spread over seeds)


COLUMNS: tuple[Column, ...] = (
    # compare --folds: every pooled image's out-of-fold prediction, and the spread of the folds' accuracies; filled
    # in by `comparing.crossval` (the val columns are empty there: each fold has its own val)
    Column(
        ROW.oof_acc, "out-of-fold acc", value=lambda s: None, cli=("oof acc", 8, _console(".2%")), text=fmt_pct,
        optional=True,
    ),
    Column(
        ROW.oof_acc_ci, "out-of-fold 95% CI", value=lambda s: None, cli=("oof 95% CI", 11, _console_interval),
        text=fmt_interval, optional=True,
    ),
    Column(
        ROW.folds_acc, "val acc over folds (mean ± std)", value=lambda s: None,
        cli=("fold mean±sd", 12, _console_seeds), text=lambda v: fmt_seed_spread(v, of="folds"), optional=True,
    ),
    Column(
        ROW.best_val_acc, "best val acc", cli=("val acc", 8, _console(".2%")),
        cell=lambda r, s: Cell(fmt_pct(r.get(ROW.best_val_acc)), f"best epoch {s.get(SUMMARY.best_epoch)}"),
    ),
    Column(ROW.val_acc_ci, "val 95% CI", cli=("val 95% CI", 11, _console_interval), cell=_interval_cell("val")),
    Column(
        ROW.val_acc_seeds, "val acc over seeds (mean ± std)",
        value=lambda s: None,  # filled in by `uncertainty.seed_spread` from the compare folder's seeds/
        cli=("val mean±sd", 11, _console_seeds), text=fmt_seed_spread, optional=True,
    ),
    Column(ROW.test_acc, "test acc", cli=("test acc", 9, _console(".2%")), text=fmt_pct),
    Column(
        ROW.test_acc_seeds, "test acc over seeds (mean ± std)", value=lambda s: None,
        cli=("test mean±sd", 12, _console_seeds), text=fmt_seed_spread, optional=True,
    ),
    Column(ROW.test_acc_ci, "test 95% CI", cli=("test 95% CI", 11, _console_interval), cell=_interval_cell("test")),
    # compare --shift-test: written into summary.json with the run's shift.json ({set: accuracy})
    Column(
        ROW.shifted_acc, "shifted acc (mean over sets)", cli=("shifted", 8, _console(".2%")), text=fmt_pct,
        optional=True,
    ),
    Column(
        ROW.shift_gap, "shift gap (test − shifted)", cli=("gap", 7, _console("+.2%")),
        text=lambda v: "—" if v is None else f"{float(v) * 100:+.1f} pts", optional=True,
    ),
    Column(
        ROW.p_vs_winner, "McNemar p vs winner (Holm)",
        value=lambda s: None,  # filled in by `uncertainty.annotate` from the run folders' predictions
        cli=("p vs #1", 7, fmt_p), cell=_p_cell,
    ),
    Column(
        ROW.p_folds, "corrected t-test p vs winner over the folds (Holm)", value=lambda s: None,
        cli=("p folds", 7, fmt_p), text=fmt_p, optional=True,
    ),
    Column(
        ROW.tied, "tied with winner",
        value=lambda s: None,  # filled in by `uncertainty.annotate`: p >= 0.05 against the winner
        cli=("tied", 4, _console_tied), cell=_tied_cell,
    ),
    Column(ROW.epochs, "epochs", cli=("epochs", 6, str), text=lambda v: "—" if v is None else str(v)),
    Column(ROW.train_time_s, "train time", cli=("train s", 8, _console(".1f")), text=fmt_seconds),
    Column(ROW.wall_time_s, "wall time", text=fmt_seconds),
    Column(ROW.images_per_s, "img/s", cli=("img/s", 8, _console(".0f")), text=fmt_rate),
    Column(
        ROW.trainable_params, "trainable params per phase",
        value=lambda s: "/".join(str(n) for n in s.get(SUMMARY.trainable_params) or []),
        cli=("trainable params", 22, _console_params), cell=_params_cell,
    ),
    Column(ROW.peak_rss_mb, "peak memory", cell=_memory_cell),
    Column(
        ROW.time_vs_full, "train time saved vs full",
        value=lambda s: None,  # filled in by `rank`, relative to the full fine-tune's train time
        cli=("vs full", 8, _console("+.0%")), cell=_saved_cell,
    ),
)  # fmt: skip

# A cross-validated comparison's own columns (out of fold, over the folds): its val columns are empty, and a plain
# comparison's comparison.csv keeps its columns and their order (the folds' come last, and only with folds).
FOLDS_KEYS = (ROW.oof_acc, ROW.oof_acc_ci, ROW.folds_acc, ROW.p_folds)
PLAIN_VAL_KEYS = (ROW.best_val_acc, ROW.val_acc_ci)
CSV_FIELDS = (ROW.rank, ROW.strategy, *(c.key for c in COLUMNS if c.key not in FOLDS_KEYS), ROW.run_dir)


def row_from_summary(name: str, run_dir: Path | str, summary: Summary) -> Row:
    row: Row = {ROW.strategy: name}
    for c in COLUMNS:
        row[c.key] = c.value(summary) if c.value else summary.get(c.key)
    row[ROW.run_dir] = str(run_dir)
    return row


def rank(rows: list[Row]) -> list[Row]:
    """Best val accuracy first (its mean over seeds when there are several), then less training time;
    `time_vs_full` relative to the full fine-tune (of the same model in a model grid)."""
    full_times = {
        split_name(r[ROW.strategy])[0]: r.get(ROW.train_time_s)
        for r in rows
        if split_name(r[ROW.strategy])[1] == "full"
    }
    for r in rows:
        full_time = full_times.get(split_name(r[ROW.strategy])[0])
        if r.get(ROW.time_vs_full) is None and full_time and r.get(ROW.train_time_s) is not None:
            # Negative = this strategy needed less training time than full fine-tuning.
            r[ROW.time_vs_full] = round(r[ROW.train_time_s] / full_time - 1, 4)

    def val(r: Row) -> float:
        if r.get(ROW.oof_acc) is not None:  # compare --folds: every pooled image, out of fold
            return float(r[ROW.oof_acc])
        return (r.get(ROW.val_acc_seeds) or [r.get(ROW.best_val_acc) or 0.0])[0]

    rows.sort(key=lambda r: (-val(r), r.get(ROW.train_time_s) or 0.0))
    for i, r in enumerate(rows):
        r[ROW.rank] = i + 1
    return rows


def shown_columns(rows: list[Row]) -> list[Column]:
    """Every column, less the optional ones that no row has a value for."""
    folds = any(r.get(ROW.oof_acc) is not None for r in rows)
    return [
        c for c in COLUMNS
        if (not c.optional or any(r.get(c.key) is not None for r in rows)) and not (folds and c.key in PLAIN_VAL_KEYS)
    ]  # fmt: skip


def report_cells(row: Row, summary: Summary | None, columns: list[Column] | None = None) -> list[Cell]:
    """The report's cells of one row after rank and strategy, in column order."""
    s = summary or {}
    return [c.cell(row, s) if c.cell else Cell(c.text(row.get(c.key))) for c in columns or COLUMNS]


def write_comparison(out_dir: Path, rows: list[Row], extra: dict[str, Any] | None = None) -> None:
    """comparison.csv and comparison.json: the ranked rows (a list), or with `extra` (compare --folds: the folds,
    the race, the answer) an object holding them as "rows" beside those entries."""
    fields = CSV_FIELDS + FOLDS_KEYS if any(r.get(ROW.oof_acc) is not None for r in rows) else CSV_FIELDS
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in fields})
    write_text_atomic(out_dir / COMPARISON_CSV, buf.getvalue())
    doc: Any = {"rows": rows, **extra} if extra else rows
    write_text_atomic(out_dir / COMPARISON_JSON, json.dumps(doc, indent=2))


def comparison_rows(doc: Any) -> Any:
    """The rows of a comparison.json: the list itself, or a cross-validated comparison's "rows"."""
    return doc.get("rows") if isinstance(doc, dict) else doc


def format_table(rows: list[Row]) -> str:
    """The console table of a comparison."""
    shown = [c for c in shown_columns(rows) if c.cli]
    width = max([14, *(len(str(r[ROW.strategy])) for r in rows)])
    header = f"{'#':>2}  {'strategy':<{width}} " + " ".join(f"{c.cli[0]:>{c.cli[1]}}" for c in shown)
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = " ".join(f"{c.cli[2](r.get(c.key)):>{c.cli[1]}}" for c in shown)
        lines.append(f"{r[ROW.rank]:>2}  {r[ROW.strategy]:<{width}} {cells}")
    return "\n".join(lines)
