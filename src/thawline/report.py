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
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from thawline.config import atomic_write_text
from thawline.errors import ThawlineError
from thawline.metrics import (
    Calibration,
    ClassMetrics,
    Predictions,
    accuracy,
    calibration,
    confusion_matrix,
    per_class_metrics,
    read_predictions,
    row_normalize,
)

FIG_DIR = "report_files"
REPORT_NAME = "report.html"
GRID_NAME = "prediction_grid.png"
DPI = 100
OK_COLOR = "#1b7f3b"
BAD_COLOR = "#d62728"
WINNER_COLOR = "#e6a100"


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
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
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
    candidates = [folder / strategy.replace("/", "_")]
    if run_dir:
        candidates += [folder / Path(run_dir).name, Path(run_dir)]
    for c in candidates:
        if (c / "summary.json").is_file() or (c / "metrics.jsonl").is_file():
            return c
    return candidates[0]


def _row_from_summary(name: str, run_dir: Path, s: dict[str, Any]) -> dict[str, Any]:
    return {
        "strategy": name,
        "best_val_acc": s.get("best_val_acc"),
        "test_acc": s.get("test_acc"),
        "epochs": s.get("epochs"),
        "wall_time_s": s.get("wall_time_s"),
        "train_time_s": s.get("train_time_s"),
        "images_per_s": s.get("images_per_s"),
        "trainable_params": "/".join(str(n) for n in s.get("trainable_params") or []),
        "peak_rss_mb": s.get("peak_rss_mb"),
        "time_vs_full": None,
        "run_dir": str(run_dir),
    }


def _rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Same order as `thawline compare`: best val acc first, then less training time."""
    full = next((r for r in rows if r["strategy"] == "full"), None)
    full_time = full.get("train_time_s") if full else None
    for r in rows:
        if r.get("time_vs_full") is None and full_time and r.get("train_time_s") is not None:
            r["time_vs_full"] = round(r["train_time_s"] / full_time - 1, 4)
    rows.sort(key=lambda r: (-(r.get("best_val_acc") or 0.0), r.get("train_time_s") or 0.0))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


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
        rows = [_row_from_summary(run.name, folder, run.summary)] if run.summary else []
        return kind, _rank(rows), runs, notes
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
                rows.append(_row_from_summary(name, path, runs[name].summary))
        return kind, _rank(rows), runs, notes

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
        names += [p.name for p in sorted(folder.iterdir()) if (p / "summary.json").is_file() and p.name not in names]
        rows = []
        for name in names:
            path = _resolve_subrun(folder, name, None)
            if not path.is_dir():
                notes.append(f"{name}: no run folder yet")
                continue
            run = load_run(path, name)
            runs[name] = run
            if run.summary:
                rows.append(_row_from_summary(name, path, run.summary))
        rows = _rank(rows)
    for name, run in runs.items():
        if not run.finished:
            notes.append(f"{name}: not finished (no summary.json in {run.run_dir})")
    return kind, rows, runs, notes


# ---- figures: one plain function each, all on matplotlib's Agg canvas (no pyplot, no global state) --------


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def save_figure(fig, path: Path) -> None:
    """Write a PNG next to its final name, then rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pct_axis(ax, axis: str = "y") -> None:
    """Format a 0..1 axis as percent with just enough decimals for its current range (call after plotting)."""
    from matplotlib.ticker import PercentFormatter

    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    span = abs(hi - lo) * 100
    decimals = 0 if span >= 8 else 1 if span >= 0.8 else 2
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(PercentFormatter(1.0, decimals=decimals))


def _phase_spans(metrics: list[dict[str, Any]]) -> list[tuple[int, float, float, str]]:
    """(phase, first epoch - 0.5, last epoch + 0.5, what trains) for each phase in metrics order."""
    spans: list[tuple[int, float, float, str]] = []
    for m in metrics:
        phase, epoch = m.get("phase", 1), m["epoch"]
        if spans and spans[-1][0] == phase:
            p, lo, _, train = spans[-1]
            spans[-1] = (p, lo, epoch + 0.5, train)
        else:
            spans.append((phase, epoch - 0.5, epoch + 0.5, str(m.get("phase_train", ""))))
    return spans


def plot_curves(metrics: list[dict[str, Any]], path: Path, best_epoch: int | None = None, title: str = "") -> None:
    """Train/val loss and accuracy per epoch; dashed vertical lines where a new phase starts, phases shaded."""
    fig = _figure(8.0, 3.0)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [m["epoch"] for m in metrics]
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, color in (("train", "#1f77b4"), ("val", "#ff7f0e")):
            ys = [m.get(f"{split}_{key}") for m in metrics]
            pts = [(x, y) for x, y in zip(epochs, ys, strict=True) if y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=4, color=color, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        spans = _phase_spans(metrics)
        for i, (phase, lo, hi, train) in enumerate(spans):
            if i > 0:
                ax.axvline(lo, color="#555", ls="--", lw=1)
            if len(spans) > 1:
                if i % 2 == 1:
                    ax.axvspan(lo, hi, color="#000", alpha=0.04, lw=0)
                ax.text(
                    (lo + hi) / 2,
                    1.01,
                    f"P{phase}: {train}",
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="#444",
                    clip_on=False,
                )
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if best_epoch is not None:
        best = next((m for m in metrics if m["epoch"] == best_epoch), None)
        if best and best.get("val_acc") is not None:
            ax_acc.plot(
                [best_epoch],
                [best["val_acc"]],
                marker="*",
                ms=14,
                color=WINNER_COLOR,
                ls="none",
                label="best",
                zorder=5,
            )
    _pct_axis(ax_acc)
    ax_acc.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


def _max_trainable(row: dict[str, Any]) -> float | None:
    try:
        return float(max(int(n) for n in str(row.get("trainable_params") or "").split("/") if n))
    except ValueError:
        return None


def plot_tradeoffs(rows: list[dict[str, Any]], path: Path) -> None:
    """Best val accuracy against wall time and against trainable parameters; one labelled point per strategy."""
    fig = _figure(9.0, 3.6)
    ax_time, ax_params = fig.subplots(1, 2, sharey=True)
    for ax, xs, xlabel in (
        (ax_time, [r.get("wall_time_s") for r in rows], "wall time (s)"),
        (ax_params, [_max_trainable(r) for r in rows], "trainable parameters (largest phase)"),
    ):
        for r, x in zip(rows, xs, strict=True):
            y = r.get("best_val_acc")
            if x is None or y is None:
                continue
            winner = r.get("rank") == 1
            ax.scatter(
                [x],
                [y],
                s=120 if winner else 50,
                marker="*" if winner else "o",
                color=WINNER_COLOR if winner else "#1f77b4",
                edgecolor="#333",
                zorder=3,
            )
            ax.annotate(r["strategy"], (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.margins(x=0.2, y=0.15)
    if any(_max_trainable(r) for r in rows):
        ax_params.set_xscale("log")
    ax_time.set_ylabel("best val accuracy")
    _pct_axis(ax_time)
    fig.suptitle("accuracy vs cost", fontsize=11)
    save_figure(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    """Counts and row-normalised (recall) confusion matrices side by side."""
    k = len(classes)
    side = min(max(0.42 * k + 2.2, 4.0), 11.0)
    fig = _figure(2 * side + 0.8, side)
    axes = fig.subplots(1, 2)
    norm = row_normalize(cm)
    annotate = k <= 20
    fontsize = 8 if k <= 12 else 6
    for ax, data, name in ((axes[0], cm, "counts"), (axes[1], norm, "row-normalised (recall)")):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(float(data.max()), 1e-9))
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=fontsize)
        ax.set_yticks(range(k), classes, fontsize=fontsize)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(im, ax=ax, shrink=0.8)
        if annotate:
            hi = float(data.max()) or 1.0
            for i in range(k):
                for j in range(k):
                    v = data[i, j]
                    if v == 0:
                        continue
                    text = f"{int(v)}" if data is cm else f"{v:.0%}"
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=fontsize - 1,
                        color="white" if v > hi * 0.6 else "#222",
                    )
    if title:
        fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


def plot_reliability(cal: Calibration, path: Path) -> None:
    """Reliability diagram (accuracy per confidence bin against the diagonal) and the confidence histogram."""
    fig = _figure(5.2, 5.4)
    ax, ax_hist = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    width = 1.0 / len(cal.count)
    centers = cal.edges[:-1] + width / 2
    filled = cal.count > 0
    lo = np.minimum(cal.acc, cal.conf)[filled]
    gap = np.abs(cal.acc - cal.conf)[filled]
    ax.bar(centers[filled], cal.acc[filled], width=width * 0.92, color="#9ec5e8", edgecolor="#1f77b4", label="accuracy")
    ax.bar(
        centers[filled],
        gap,
        bottom=lo,
        width=width * 0.92,
        fill=False,
        hatch="///",
        edgecolor=BAD_COLOR,
        lw=0.8,
        label="gap to confidence",
    )
    ax.hlines(
        cal.conf[filled],
        centers[filled] - width * 0.46,
        centers[filled] + width * 0.46,
        color="#222",
        lw=2,
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], ls="--", color="#555", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    _pct_axis(ax)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"reliability  (ECE {cal.ece:.1%}, max gap {cal.mce:.1%}, n={cal.n})", fontsize=10)
    ax.grid(alpha=0.3)
    ax_hist.bar(centers, cal.count, width=width * 0.95, color="#888")
    ax_hist.set_xlabel("confidence")
    ax_hist.set_ylabel("samples")
    _pct_axis(ax_hist, "x")
    save_figure(fig, path)


def _load_tile(path: str, size: int = 112) -> np.ndarray | None:
    from thawline.images import BadImage, open_rgb

    try:
        img = open_rgb(path)
    except BadImage:
        return None
    img.thumbnail((size, size))
    return np.asarray(img)


def _mark_tile(ax, img: np.ndarray, title: str, mistake: bool) -> None:
    ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    color = BAD_COLOR if mistake else OK_COLOR
    ax.set_title(title, fontsize=8, color=color)
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(3 if mistake else 1)


def plot_prediction_grid(
    preds: Predictions, path: Path, per_class: int = 4, max_classes: int = 20, seed: int = 0
) -> tuple[int, int]:
    """A row of samples per true class titled with the prediction; mistakes in red. Returns (shown, skipped)."""
    rng = np.random.default_rng(seed)
    classes = [c for c in range(preds.num_classes) if (preds.labels == c).any()][:max_classes]
    picked: list[list[tuple[int, np.ndarray]]] = []
    skipped = 0
    for c in classes:
        row: list[tuple[int, np.ndarray]] = []
        idx = np.flatnonzero(preds.labels == c)
        # Show mistakes first when there are any, then correct ones, both in a seeded random order.
        idx = rng.permutation(idx)
        idx = np.concatenate([idx[preds.correct[idx] == 0][: per_class // 2], idx])
        seen: set[int] = set()
        for i in idx:
            if len(row) == per_class:
                break
            if int(i) in seen:
                continue
            seen.add(int(i))
            tile = _load_tile(preds.paths[i])
            if tile is None:
                skipped += 1
                continue
            row.append((int(i), tile))
        picked.append(row)
    cols = max((len(r) for r in picked), default=0)
    if cols == 0:
        return 0, skipped
    fig = _figure(1.4 * cols + 1.2, 1.5 * len(classes) + 0.3)
    axes = np.atleast_2d(fig.subplots(len(classes), cols, squeeze=False))
    for r, (c, row) in enumerate(zip(classes, picked, strict=True)):
        for j in range(cols):
            ax = axes[r, j]
            if j >= len(row):
                ax.axis("off")
                continue
            i, tile = row[j]
            pred = preds.classes[preds.preds[i]]
            _mark_tile(ax, tile, f"{pred} {preds.confidence[i]:.0%}", preds.labels[i] != preds.preds[i])
        axes[r, 0].set_ylabel(preds.classes[c], fontsize=8, rotation=0, ha="right", va="center")
        if not row:
            axes[r, 0].axis("on")
            axes[r, 0].set_xticks([])
            axes[r, 0].set_yticks([])
            axes[r, 0].text(0.5, 0.5, "no image found", ha="center", va="center", fontsize=7)
    fig.suptitle("predictions (row = true class, title = predicted; red = mistake)", fontsize=10)
    save_figure(fig, path)
    return sum(len(r) for r in picked), skipped


def plot_top_losses(preds: Predictions, path: Path, n: int = 12, cols: int = 4) -> tuple[int, int]:
    """The n highest-loss samples whose image can still be read. Returns (shown, skipped)."""
    tiles: list[tuple[int, np.ndarray]] = []
    skipped = 0
    for i in np.argsort(-preds.loss, kind="stable"):
        if len(tiles) == n:
            break
        tile = _load_tile(preds.paths[i])
        if tile is None:
            skipped += 1
            continue
        tiles.append((int(i), tile))
    if not tiles:
        return 0, skipped
    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig = _figure(1.65 * cols, 2.05 * rows + 0.3)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat[len(tiles) :]:
        ax.axis("off")
    for ax, (i, tile) in zip(axes.flat, tiles, strict=False):
        true, pred = preds.classes[preds.labels[i]], preds.classes[preds.preds[i]]
        title = f"{true}\n→ {pred}\nloss {preds.loss[i]:.2f} · p {preds.confidence[i]:.0%}"
        _mark_tile(ax, tile, title, preds.labels[i] != preds.preds[i])
    fig.suptitle("top losses (true → predicted)", fontsize=10)
    save_figure(fig, path)
    return len(tiles), skipped


def plot_layer_drift(drifts: dict[str, dict[str, float]], path: Path) -> None:
    """Relative L2 change of each stage's weights, one bar per strategy in each stage group."""
    stages: list[str] = []
    for d in drifts.values():
        stages += [s for s in d if s not in stages]
    names = list(drifts)
    fig = _figure(max(6.0, 0.6 * len(stages) * max(1, len(names)) / 2 + 3), 3.4)
    ax = fig.subplots()
    width = 0.8 / max(1, len(names))
    x = np.arange(len(stages))
    for k, name in enumerate(names):
        ys = [drifts[name].get(s, 0.0) for s in stages]
        ax.bar(x - 0.4 + width * (k + 0.5), ys, width=width, label=name)
    ax.set_xticks(x, stages, rotation=30, ha="right", fontsize=8)
    positive = [v for d in drifts.values() for v in d.values() if v and v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log")  # a frozen backbone's 0 and a head's large change on one axis
        ax.set_ylim(min(positive) / 2, max(positive) * 2)
    ax.set_ylabel("relative L2 change")
    ax.set_title("how far each stage moved from its starting weights", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(4, len(names)))
    save_figure(fig, path)


# ---- formatting ----------------------------------------------------------------------------------------------


def fmt_pct(x: Any, digits: int = 1) -> str:
    if x is None or math.isnan(float(x)):
        return "—"
    return f"{float(x):.{digits}%}"


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


def _phase_plan(summary: dict[str, Any] | None) -> str:
    phases = (summary or {}).get("phases") or []
    return " → ".join(
        f"{p.get('train')} ×{p.get('epochs')} @ {float(p.get('lr') or 0):.0e}"
        + (f" (bn {p['bn']})" if p.get("bn") not in (None, "frozen") else "")
        for p in phases
    )


def _display_row(row: dict[str, Any], run: RunData | None, folder: Path) -> dict[str, Any]:
    s = (run.summary if run else None) or {}
    per_phase = s.get("trainable_params") or [int(n) for n in str(row.get("trainable_params") or "").split("/") if n]
    total = s.get("total_params")
    exact = " / ".join(f"{n:,}" for n in per_phase)
    params_title = f"{exact} of {total:,} parameters" if total else exact
    memory = fmt_mb(row.get("peak_rss_mb"))
    if s.get("peak_gpu_mb"):
        memory += f" · GPU {fmt_mb(s['peak_gpu_mb'])}"
    vs = row.get("time_vs_full")
    if row["strategy"] == "full":
        saved, saved_class = "baseline", ""
    elif vs is None:
        saved, saved_class = "—", ""
    else:
        saved, saved_class = f"{-float(vs):.0%}", ("good" if vs < 0 else "bad")
    run_dir = run.run_dir if run else Path(row.get("run_dir") or folder)
    try:
        href = os.path.relpath(run_dir, folder).replace(os.sep, "/") + "/"
    except ValueError:
        href = run_dir.resolve().as_uri()
    return {
        "rank": row.get("rank"),
        "strategy": row["strategy"],
        "plan": _phase_plan(s),
        "winner": row.get("rank") == 1,
        "val_acc": fmt_pct(row.get("best_val_acc")),
        "best_epoch": s.get("best_epoch"),
        "test_acc": fmt_pct(row.get("test_acc")),
        "epochs": row.get("epochs") if row.get("epochs") is not None else "—",
        "train_time": fmt_seconds(row.get("train_time_s")),
        "wall_time": fmt_seconds(row.get("wall_time_s")),
        "images_per_s": fmt_rate(row.get("images_per_s")),
        "params": " → ".join(fmt_count(n) for n in per_phase) or "—",
        "params_title": params_title,
        "params_share": fmt_pct(max(per_phase) / total, 1) if per_phase and total else "",
        "memory": memory,
        "saved": saved,
        "saved_class": saved_class,
        "href": href,
    }


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
        ("skipped files", s.get("skipped_files")),
        ("seed", cfg.get("seed")),
    ]
    return [(k, str(v)) for k, v in items if v is not None and v != ""]


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
        out["notes"].append(f"predictions are on the {split} split (the data has no test split)")
    out["accuracy"] = fmt_pct(accuracy(preds.labels, preds.preds))
    out["n"] = len(preds)
    cm = confusion_matrix(preds.labels, preds.preds, preds.num_classes)
    plot_confusion(cm, preds.classes, figdir / "confusion.png", f"{run.name} — {split} split")
    out["confusion"] = f"{FIG_DIR}/confusion.png"
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
        {"name": name, **{k: fmt_pct(v) for k, v in avg.items() if k != "support"}, "support": avg["support"]}
        for name, avg in (("macro avg", cls.macro()), ("weighted avg", cls.weighted()))
    ]
    shown, skipped = plot_prediction_grid(preds, figdir / GRID_NAME)
    if shown:
        out["grid"] = f"{FIG_DIR}/{GRID_NAME}"
        try:
            _copy_atomic(figdir / GRID_NAME, run.run_dir / GRID_NAME)
        except OSError as e:
            out["notes"].append(f"could not write {run.run_dir / GRID_NAME} ({e.strerror})")
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
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _template():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("thawline", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html")


def render(folder: Path, figdir: Path) -> str:
    """Write every figure into `figdir` and return the page's HTML."""
    kind, rows, runs, notes = load_folder(folder)
    spec = _read_yaml(folder / "compare.yaml") if kind == "compare" else None
    trials = _trial_display(read_trials(folder, [])) if kind == "sweep" else None
    display = [_display_row(r, runs.get(r["strategy"]), folder) for r in rows]

    taken: set[str] = set()
    curves = []
    order = [r["strategy"] for r in rows] + [n for n in runs if n not in {r["strategy"] for r in rows}]
    for name in order:
        run = runs.get(name)
        if run is None:
            continue
        item: dict[str, Any] = {"name": name, "plan": _phase_plan(run.summary), "notes": list(run.notes)}
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

    best_name = rows[0]["strategy"] if rows else next(iter(runs), None)
    best = _best_run_section(runs[best_name], figdir) if best_name in runs else None

    first = runs.get(best_name) if best_name else None
    info = _run_info(first, (spec or {}).get("config")) if first else []
    title = f"thawline {({'compare': 'comparison'}).get(kind, kind)}: {folder.resolve().name}"
    return _template().render(
        title=title,
        kind=kind,
        folder=str(folder.resolve()),
        generated=datetime.now().strftime("%Y-%m-%d %H:%M"),
        info=info,
        rows=display,
        winner=display[0]["strategy"] if display else None,
        notes=notes,
        curves=curves,
        tradeoffs=tradeoffs,
        best=best,
        drift=drift,
        has_full=any(r["strategy"] == "full" for r in rows),
        trials=trials,
    )


def _fmt_drift(v: Any) -> str:
    return "—" if v is None else f"{float(v):.4f}"


def build_report(path: str | Path) -> Path:
    """Write report.html and report_files/*.png into a run or compare folder; return the report's path."""
    folder = Path(path)
    folder_kind(folder)  # one clear line before anything is written
    try:
        tmpdir = Path(tempfile.mkdtemp(dir=folder, prefix=f".{FIG_DIR}."))
    except OSError as e:
        raise ThawlineError(
            f"cannot write the report into '{folder}' ({e.strerror}); is the folder writable?"
        ) from None
    old = folder / f".{FIG_DIR}.old.{os.getpid()}"
    try:
        page = render(folder, tmpdir)
        final = folder / FIG_DIR
        if final.exists():
            final.rename(old)
        tmpdir.rename(final)
        atomic_write_text(folder / REPORT_NAME, page)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder / REPORT_NAME


__all__ = [
    "build_report",
    "load_folder",
    "load_run",
    "plot_confusion",
    "plot_curves",
    "plot_layer_drift",
    "plot_prediction_grid",
    "plot_reliability",
    "plot_top_losses",
    "plot_tradeoffs",
    "render",
]
