"""Figures that set a comparison's strategies side by side: accuracy against cost (wall time, trainable
parameters), accuracy under distribution shift, and how far each stage's weights moved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from thawline.core.runformat import ROW
from thawline.report.plots import WINNER_COLOR, _figure, _pct_axis, save_figure


def _max_trainable(row: dict[str, Any]) -> float | None:
    try:
        return float(max(int(n) for n in str(row.get(ROW.trainable_params) or "").split("/") if n))
    except ValueError:
        return None


def plot_tradeoffs(rows: list[dict[str, Any]], path: Path) -> None:
    """Best val accuracy (out-of-fold accuracy in a cross-validated comparison) against wall time and against
    trainable parameters; one labelled point per strategy."""
    folds = any(r.get(ROW.oof_acc) is not None for r in rows)
    fig = _figure(9.0, 3.6)
    ax_time, ax_params = fig.subplots(1, 2, sharey=True)
    for ax, xs, xlabel in (
        (ax_time, [r.get(ROW.wall_time_s) for r in rows], "wall time (s)"),
        (ax_params, [_max_trainable(r) for r in rows], "trainable parameters (largest phase)"),
    ):
        for r, x in zip(rows, xs, strict=True):
            y = r.get(ROW.oof_acc if folds else ROW.best_val_acc)
            if x is None or y is None:
                continue
            winner = r.get(ROW.rank) == 1
            ax.scatter(
                [x],
                [y],
                s=120 if winner else 50,
                marker="*" if winner else "o",
                color=WINNER_COLOR if winner else "#1f77b4",
                edgecolor="#333",
                zorder=3,
            )
            ax.annotate(r[ROW.strategy], (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.margins(x=0.2, y=0.15)
    if any(_max_trainable(r) for r in rows):
        ax_params.set_xscale("log")
    ax_time.set_ylabel("out-of-fold accuracy" if folds else "best val accuracy")
    _pct_axis(ax_time)
    fig.suptitle("accuracy vs cost", fontsize=11)
    save_figure(fig, path)


def _unstack_labels(fig, texts: list) -> None:
    """Move annotation labels down until none overlaps another (first in the list stays put); layout first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    placed = []
    for t in texts:
        box = t.get_window_extent(renderer)
        for _ in range(len(texts)):
            hits = [p for p in placed if box.overlaps(p)]
            if not hits:
                break
            down = box.y1 - min(p.y0 for p in hits) + 1  # pixels, to just below the lowest label it touches
            t.xyann = (t.xyann[0], t.xyann[1] - down * 72 / fig.dpi)
            box = t.get_window_extent(renderer)
        placed.append(box)


def plot_shift(rows: list[dict[str, Any]], path: Path) -> None:
    """Shifted accuracy (mean over the shifted sets) against in-distribution test accuracy; one labelled point per
    strategy, the diagonal where the shift costs nothing."""
    fig = _figure(5.6, 4.4)
    ax = fig.add_subplot()
    pts = [(r, float(r[ROW.test_acc]), float(r[ROW.shifted_acc])) for r in rows if r.get(ROW.test_acc) is not None
           and r.get(ROW.shifted_acc) is not None]  # fmt: skip
    texts = []
    for r, x, y in sorted(pts, key=lambda p: -p[2]):  # labels placed top down
        winner = r.get(ROW.rank) == 1
        ax.scatter(
            [x],
            [y],
            s=140 if winner else 50,
            marker="*" if winner else "o",
            color=WINNER_COLOR if winner else "#1f77b4",
            edgecolor="#333",
            zorder=4 if winner else 3,
        )
        texts.append(ax.annotate(r[ROW.strategy], (x, y), textcoords="offset points", xytext=(7, 4), fontsize=8))
    if pts:
        values = [v for _, x, y in pts for v in (x, y)]
        lo, hi = min(values), max(values)
        pad = max(0.02, (hi - lo) * 0.15)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="#555", lw=1, label="no loss to the shift")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("test accuracy (in distribution)")
    ax.set_ylabel("shifted accuracy (mean over sets)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    _pct_axis(ax)
    _pct_axis(ax, "x")
    ax.set_title("robustness: accuracy under distribution shift", fontsize=10)
    _unstack_labels(fig, texts)
    save_figure(fig, path)


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
