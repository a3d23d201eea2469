"""The figures' canvas and one run's curves. Every figure thawline draws is one plain function on matplotlib's Agg
canvas (no pyplot, no global state); inputs are plain data read from run files, and every PNG is written next to its
final name and renamed, so a reader never sees half a file.

Here: the shared canvas (size, colours, `save_figure`, percent axes) and the line charts of one run: loss and
accuracy per epoch, the LR range test's loss curve, the advisor's probes per depth. plots_compare sets strategies
side by side (trade-offs, shift, layer drift); plots_predictions draws from predictions.csv (confusion, calibration,
image grids).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from thawline.core.atomic import atomic_path
from thawline.core.runformat import EPOCH

DPI = 100
OK_COLOR = "#1b7f3b"
BAD_COLOR = "#d62728"
WINNER_COLOR = "#e6a100"
SMALL_FONT = 8  # pt: tile titles, row labels, class names on axes


# ---- figures: one plain function each, all on matplotlib's Agg canvas (no pyplot, no global state) --------


def _figure(w: float, h: float, layout: str | None = "constrained"):
    """A w x h inch figure at DPI; layout=None when the caller places its axes itself."""
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout=layout)


def save_figure(fig, path: Path) -> None:
    """Write a PNG next to its final name, then rename: a reader never sees half a file (thawline.core.atomic)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


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
        phase, epoch = m.get(EPOCH.phase, 1), m[EPOCH.epoch]
        if spans and spans[-1][0] == phase:
            p, lo, _, train = spans[-1]
            spans[-1] = (p, lo, epoch + 0.5, train)
        else:
            spans.append((phase, epoch - 0.5, epoch + 0.5, str(m.get(EPOCH.phase_train, ""))))
    return spans


def plot_curves(metrics: list[dict[str, Any]], path: Path, best_epoch: int | None = None, title: str = "") -> None:
    """Train/val loss and accuracy per epoch; dashed vertical lines where a new phase starts, phases shaded."""
    fig = _figure(8.0, 3.0)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [m[EPOCH.epoch] for m in metrics]
    panels = ((ax_loss, EPOCH.train_loss, EPOCH.val_loss, "loss"), (ax_acc, EPOCH.train_acc, EPOCH.val_acc, "accuracy"))
    for ax, train_key, val_key, label in panels:
        for key, split, color in ((train_key, "train", "#1f77b4"), (val_key, "val", "#ff7f0e")):
            ys = [m.get(key) for m in metrics]
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
                    # more than 3 phases (gradual): the number alone fits above a one-epoch span; the plan
                    # above the figure names what each trains
                    f"P{phase}: {train}" if len(spans) <= 3 else f"P{phase}",
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
        best = next((m for m in metrics if m[EPOCH.epoch] == best_epoch), None)
        if best and best.get(EPOCH.val_acc) is not None:
            ax_acc.plot(
                [best_epoch],
                [best[EPOCH.val_acc]],
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


def plot_lr_find(
    path: Path, lrs: list[float], losses: list[float], smoothed: list[float], suggested_lr: float, title: str
) -> None:
    """The LR range test: raw and smoothed loss against log LR, the suggested LR marked."""
    lr = np.asarray(lrs)
    raw = np.asarray([v if math.isfinite(v) else np.nan for v in losses])
    sm = np.asarray([v if math.isfinite(v) else np.nan for v in smoothed])
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    ax.plot(lr, raw, color="#bbbbbb", lw=0.8, label="loss")
    ax.plot(lr, sm, color="#1f77b4", lw=1.8, label="smoothed loss")
    finite = sm[np.isfinite(sm)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite[0])
        ax.set_ylim(lo - 0.1 * abs(hi - lo) - 1e-3, max(hi, lo) + 0.6 * abs(hi - lo) + 1e-3)
    fill = np.nanmax(sm) if finite.size else 0.0
    y_at = float(np.interp(np.log10(suggested_lr), np.log10(lr), np.nan_to_num(sm, nan=fill)))
    ax.axvline(suggested_lr, color=BAD_COLOR, ls="--", lw=1)
    ax.plot([suggested_lr], [y_at], "o", color=BAD_COLOR, label=f"suggested {suggested_lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (first phase)")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_probe_depth(
    stages: list[str],
    linear: list[float | None],
    knn: list[float | None],
    logme: list[float | None],
    rgn: list[float | None],
    path: Path,
    chance: float | None = None,
    freeze: int | None = None,
    title: str = "",
) -> None:
    """`thawline advise`: linear-probe and k-NN val accuracy of the frozen features after each stage (left), LogME
    per stage and the relative gradient norm ||g||/||w|| per stage (right); the recommended freeze depth dashed."""
    fig = _figure(10.0, 3.6)
    ax_acc, ax_logme = fig.subplots(1, 2)
    x = np.arange(len(stages))

    def pts(values: list[float | None]) -> tuple[list[int], list[float]]:
        keep = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
        return [i for i, _ in keep], [v for _, v in keep]

    ax_acc.plot(*pts(linear), marker="o", ms=5, color="#1f77b4", label="linear probe")
    ax_acc.plot(*pts(knn), marker="s", ms=4, color="#ff7f0e", label="k-NN (cosine)")
    xs, ys = pts(linear)
    if ys:
        best = max(range(len(ys)), key=lambda j: (ys[j], xs[j]))
        ax_acc.plot([xs[best]], [ys[best]], marker="*", ms=14, color=WINNER_COLOR, ls="none", label="best", zorder=5)
    if chance is not None:
        ax_acc.axhline(chance, color="#999", ls=":", lw=1, label="majority class")
    ax_acc.set_ylabel("val accuracy (frozen features)")
    _pct_axis(ax_acc)
    ax_logme.plot(*pts(logme), marker="o", ms=5, color="#2ca02c", label="LogME")
    ax_logme.set_ylabel("LogME", color="#2ca02c")
    ax_rgn = ax_logme.twinx()
    gx, gy = pts(rgn)
    ax_rgn.bar(gx, gy, width=0.5, color="#9467bd", alpha=0.35, label="||g|| / ||w||")
    ax_rgn.set_ylabel("relative gradient norm", color="#9467bd")
    ax_logme.set_zorder(ax_rgn.get_zorder() + 1)  # the LogME line over the bars
    ax_logme.patch.set_visible(False)
    positive = [v for v in gy if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax_rgn.set_yscale("log")
    for ax in (ax_acc, ax_logme):
        ax.set_xticks(x, stages, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("features after stage")
        ax.grid(alpha=0.3)
        if freeze is not None and 0 < freeze < len(stages):
            ax.axvline(freeze - 0.5, color=BAD_COLOR, ls="--", lw=1)
            ax.text(
                freeze - 0.5,
                0.02,
                "frozen | trained",
                ha="center",
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                color=BAD_COLOR,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )
    ax_acc.legend(fontsize=8, loc="best")
    handles = ax_logme.get_legend_handles_labels()[0] + ax_rgn.get_legend_handles_labels()[0]
    ax_logme.legend(handles, [str(h.get_label()) for h in handles], fontsize=8, loc="best")
    ax_acc.set_title("how well each depth's features separate the classes", fontsize=10)
    ax_logme.set_title("transferability (LogME) and gradient pressure per stage", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    save_figure(fig, path)
