"""Every figure thawline draws, one plain function each, on matplotlib's Agg canvas (no pyplot, no global state).

Used by the report (curves, trade-offs, confusion, calibration, grids, drift), by a run (its prediction grid for
TensorBoard) and by the LR range test (its loss curve). Inputs are plain data read from run files; every PNG is
written next to its final name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thawline.core.atomic import atomic_path
from thawline.data.files import printable
from thawline.data.images import BadImage, open_rgb
from thawline.report.metrics import Calibration, Predictions, row_normalize

GRID_NAME = "prediction_grid.png"
DPI = 100
OK_COLOR = "#1b7f3b"
BAD_COLOR = "#d62728"
WINNER_COLOR = "#e6a100"
SMALL_FONT = 8  # pt: tile titles, row labels, class names on axes
CLASS_NAME_PX = 160  # the widest class name on a confusion matrix's axes; longer ones lose their middle
MAX_TICK_LABELS = 40  # class names on a confusion matrix's axis at most (6 pt on 11 inches)


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
    pts = [(r, float(r["test_acc"]), float(r["shifted_acc"])) for r in rows if r.get("test_acc") is not None
           and r.get("shifted_acc") is not None]  # fmt: skip
    texts = []
    for r, x, y in sorted(pts, key=lambda p: -p[2]):  # labels placed top down
        winner = r.get("rank") == 1
        ax.scatter(
            [x],
            [y],
            s=140 if winner else 50,
            marker="*" if winner else "o",
            color=WINNER_COLOR if winner else "#1f77b4",
            edgecolor="#333",
            zorder=4 if winner else 3,
        )
        texts.append(ax.annotate(r["strategy"], (x, y), textcoords="offset points", xytext=(7, 4), fontsize=8))
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


@functools.lru_cache(maxsize=4096)
def _text_px(text: str, size: float = SMALL_FONT) -> float:
    """The width of `text` in px at `size` pt, as Agg draws it."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    width, _, _ = RendererAgg(1, 1, DPI).get_text_width_height_descent(text, FontProperties(size=size), False)
    return float(width)


def _shorten(name: str, px: float, size: float = SMALL_FONT) -> str:
    """`name` in at most `px` pixels, its middle replaced by an ellipsis: a long class name (iNaturalist's whole
    taxonomy) keeps its start and its distinguishing end instead of running into the next tile or off the page.
    Control characters show as their escapes (files.printable), as in the page and the terminal."""
    name = printable(name)

    def cut(keep: int) -> str:
        head = keep // 2
        return name[:head] + "…" + name[len(name) - (keep - head) :]

    if _text_px(name, size) <= px:
        return name
    lo, hi = 0, len(name) - 1  # the most characters kept such that it fits: cut(lo) fits (or lo == 0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _text_px(cut(mid), size) <= px else (lo, mid - 1)
    return cut(lo)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    """Counts and row-normalised (recall) confusion matrices side by side."""
    k = len(classes)
    side = min(max(0.42 * k + 2.2, 4.0), 11.0)
    fig = _figure(2 * side + 0.8, side)
    axes = fig.subplots(1, 2)
    norm = row_normalize(cm)
    annotate = k <= 20
    fontsize = SMALL_FONT if k <= 12 else 6
    # past ~40 classes the names overlap on an 11-inch axis: every step-th is named (the report's "most
    # confused" table names the cells that matter)
    step = math.ceil(k / MAX_TICK_LABELS)
    ticks = list(range(0, k, step))
    names = [_shorten(classes[i], CLASS_NAME_PX, fontsize) for i in ticks]
    for ax, data, name in ((axes[0], cm, "counts"), (axes[1], norm, "row-normalised (recall)")):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(float(data.max()), 1e-9))
        ax.set_title(name, fontsize=10)
        ax.set_xticks(ticks, names, rotation=45, ha="right", fontsize=fontsize)
        ax.set_yticks(ticks, names, fontsize=fontsize)
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


TILE = 112  # px: the longer side of every image in the grids (small images are enlarged, pixels kept sharp)
TITLE_PX = TILE + 6  # the widest title line over a tile: its cell (tile, borders, gap) less 4 px a side
LABEL_PX = 280  # the widest row label left of the tiles


@dataclass
class Tile:
    image: np.ndarray  # (h, w, 3) uint8, the longer side TILE
    title: str  # one or more lines above the image
    mistake: bool


_ESCAPED = re.compile(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})")


def _load_tile(path: str, size: int = TILE) -> np.ndarray | None:
    from PIL import Image

    if "\\" in path and not os.path.lexists(path):  # predictions.csv holds names escaped (files.printable)
        path = _ESCAPED.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), path)
    try:
        img = open_rgb(path, at_least=2 * size)  # a big JPEG decoded scaled, as thumbnail() would on its own
    except BadImage:
        return None
    img.thumbnail((size, size))
    if max(img.size) < size:  # a 28 px image fills its cell as imshow would show it: nearest, no blur
        scale = size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
    return np.asarray(img)


def _hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], np.uint8)


def _tile_sheet(rows: list[list[Tile]], row_labels: list[str] | None, title: str, path: Path) -> None:
    """Tiles pasted into one image and drawn in one axes, titles as text above each: the same picture as a grid of
    subplots, ~10x faster to draw (40 axes under constrained layout took ~2 s a figure, once per strategy)."""
    lines = max((t.title.count("\n") + 1 for row in rows for t in row), default=1)
    border, gap, line_px = 3, 8, 12  # px; a title line at fontsize 8 and 100 dpi is ~11 px
    band = lines * line_px + 4  # the titles' band above each tile
    cell_w, cell_h = TILE + 2 * border + gap, TILE + 2 * border + band
    cols = max((len(r) for r in rows), default=1)
    sheet = np.full((len(rows) * cell_h, cols * cell_w, 3), 255, np.uint8)
    texts: list[tuple[float, float, str, str]] = []
    for r, row in enumerate(rows):
        for j, tile in enumerate(row):
            color = BAD_COLOR if tile.mistake else OK_COLOR
            h, w = tile.image.shape[:2]
            top = r * cell_h + band + border + (TILE - h) // 2
            left = j * cell_w + gap // 2 + border + (TILE - w) // 2
            b = border if tile.mistake else 1
            sheet[top - b : top + h + b, left - b : left + w + b] = _hex_rgb(color)
            sheet[top : top + h, left : left + w] = tile.image[..., :3]
            texts.append((left + w / 2, top - b - 2, tile.title, color))
    label_px = 0 if not row_labels else math.ceil(12 + max(_text_px(s) for s in row_labels))
    title_px = 30
    height, width = sheet.shape[0] + title_px, sheet.shape[1] + label_px
    fig = _figure(width / DPI, height / DPI, layout=None)  # exactly width x height px: tiles drawn 1:1
    ax = fig.add_axes((label_px / width, 0, sheet.shape[1] / width, sheet.shape[0] / height))
    ax.imshow(sheet, interpolation="nearest")
    ax.set_axis_off()
    for x, y, text, color in texts:
        ax.text(x, y, text, fontsize=SMALL_FONT, color=color, ha="center", va="bottom", linespacing=1.1, clip_on=False)
    for r, label in enumerate(row_labels or []):
        ax.text(-8, (r + 0.5) * cell_h + band / 2, label, fontsize=SMALL_FONT, ha="right", va="center",
                clip_on=False)  # fmt: skip
    fig.suptitle(title, fontsize=10, y=1 - 6 / height, va="top")
    save_figure(fig, path)


def plot_prediction_grid(
    preds: Predictions, path: Path, per_class: int = 4, max_classes: int = 20, seed: int = 0
) -> tuple[int, int]:
    """A row of samples per true class titled with the prediction; mistakes in red. Returns (shown, skipped)."""
    rng = np.random.default_rng(seed)
    classes = [c for c in range(preds.num_classes) if (preds.labels == c).any()][:max_classes]
    rows: list[list[Tile]] = []
    skipped = 0
    for c in classes:
        row: list[Tile] = []
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
            image = _load_tile(preds.paths[i])
            if image is None:
                skipped += 1
                continue
            confidence = f" {preds.confidence[i]:.0%}"
            title = _shorten(preds.classes[preds.preds[i]], TITLE_PX - _text_px(confidence)) + confidence
            row.append(Tile(image, title, bool(preds.labels[i] != preds.preds[i])))
        rows.append(row)
    shown = sum(len(r) for r in rows)
    if shown == 0:
        return 0, skipped
    labels = [
        _shorten(preds.classes[c] + ("  (no image found)" if not row else ""), LABEL_PX)
        for c, row in zip(classes, rows, strict=True)
    ]
    _tile_sheet(rows, labels, "predictions (row = true class, title = predicted; red = mistake)", path)
    return shown, skipped


def plot_top_losses(preds: Predictions, path: Path, n: int = 12, cols: int = 4) -> tuple[int, int]:
    """The n highest-loss samples whose image can still be read. Returns (shown, skipped)."""
    tiles: list[Tile] = []
    skipped = 0
    for i in np.argsort(-preds.loss, kind="stable"):
        if len(tiles) == n:
            break
        image = _load_tile(preds.paths[i])
        if image is None:
            skipped += 1
            continue
        true = _shorten(preds.classes[preds.labels[i]], TITLE_PX)
        pred = _shorten(preds.classes[preds.preds[i]], TITLE_PX - _text_px("→ "))
        title = f"{true}\n→ {pred}\nloss {preds.loss[i]:.2f} · p {preds.confidence[i]:.0%}"
        tiles.append(Tile(image, title, bool(preds.labels[i] != preds.preds[i])))
    if not tiles:
        return 0, skipped
    cols = min(cols, len(tiles))
    _tile_sheet([tiles[k : k + cols] for k in range(0, len(tiles), cols)], None, "top losses (true → predicted)", path)
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
