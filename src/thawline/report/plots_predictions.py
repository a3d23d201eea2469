"""Figures from one run's predictions.csv: confusion matrices, the reliability diagram, and the image grids (a
prediction grid per true class, the top losses), long class names shortened to fit."""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thawline.data.files import printable
from thawline.data.images import BadImage, open_rgb
from thawline.report.metrics import Calibration, Predictions, row_normalize
from thawline.report.plots import BAD_COLOR, DPI, OK_COLOR, SMALL_FONT, _figure, _pct_axis, save_figure

GRID_NAME = "prediction_grid.png"
CLASS_NAME_PX = 160  # the widest class name on a confusion matrix's axes; longer ones lose their middle
MAX_TICK_LABELS = 40  # class names on a confusion matrix's axis at most (6 pt on 11 inches)


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
