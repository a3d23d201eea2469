"""Build the benchmark task suite: ImageFolder tasks of different kinds and sizes, from offline sources only.

    python benchmarks/suite/build.py --out benchmarks/suite/data              # every task
    python benchmarks/suite/build.py --out DIR --tasks count-shapes,textures  # some tasks
    python benchmarks/suite/build.py --list                                   # the tasks, their sources

Every task is `OUT/<task>/{train,val,test}/<class>/*.png` plus `OUT/<task>/manifest.json` (kind, classes, counts
per split and class, the recommended img_size, epochs and whether a horizontal flip keeps the label), and
`OUT/manifest.json` lists every task built in OUT. Everything is seeded: the same sources give the same bytes.
Within a task no two images are identical (across splits and classes), so `thawline data check` finds no leakage.
A task whose source is missing is skipped with the command that installs it; a rerun reuses tasks already built
with the same arguments (`--force` rebuilds).

Sources (nothing is downloaded at build time):

- Debian packages (`sudo apt-get install <package>`):
    dataset-fashion-mnist          Fashion-MNIST IDX files (read with thawline.data.fashion_mnist)
    fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf      training fonts of font-chars
    fonts-crosextra-carlito fonts-crosextra-caladea                               validation fonts of font-chars
    fonts-urw-base35                                                              test fonts of font-chars
    jigzo-data                     12 real photographs (camera JPEGs inside the jigsaw game's .pzl files)
  one line: sudo apt-get install dataset-fashion-mnist fonts-dejavu-core fonts-dejavu-extra fonts-liberation
            fonts-freefont-ttf fonts-crosextra-carlito fonts-crosextra-caladea fonts-urw-base35 jigzo-data
- Python packages (the `bench` extra: pip install -e '.[bench]'):
    scikit-learn                   load_digits (8x8 handwritten digits), load_sample_image (2 photographs)
    scikit-image                   skimage.data photographs and the LFW face/non-face subset
- numpy + Pillow drawing           the procedural tasks (count, orientation, position, textures)

Tasks (per class: train/val/test at --scale 1):

    fmnist-20       clothing, few-shot            10 classes  20/20/100   28 px stored, img_size 64
    fmnist-500      clothing, mid-size            10 classes 500/50/200   28 px, img_size 64, 4 epochs
    fmnist-tops     fine-grained clothing          4 classes  75/25/200   T-shirt/top, pullover, coat, shirt
    font-chars      letters in unseen fonts       26 classes  12/4/10     train/val/test fonts from other packages
    font-style      sans/serif/mono, unseen letters 3 classes 100/30/100  3-letter strings; letters split
    count-shapes    counting (1-5 shapes)          5 classes  60/20/60
    orientation     bar angle 0..150 degrees       6 classes  50/15/50    no flips (a flip mirrors the angle)
    position        3x3 cell of the red disc       9 classes  30/10/30    with distractors; no flips
    textures        procedural textures            8 classes  35/10/40    stripes, checker, dots, grid, rings, ...
    digits          scikit-learn 8x8 digits       10 classes  30/15/80    8 px stored, img_size 64
    photo-objects   crops of 12 real photos       12 classes  25/8/20     by source photo (jigzo-data)
    photo-scenes    crops of 10 real photos       10 classes  30/8/20     by source photo (skimage + sklearn)
    faces           face vs non-face (LFW subset)  2 classes  30/20/50    25 px stored, img_size 64

Photo crops: each photo is cut into a 4x4 grid of tiles; per photo, a seeded choice of 10 tiles gives train crops,
2 tiles val crops and 4 tiles test crops, and a crop never leaves its tile, so no pixel of a test crop was seen in
training. Nearly uniform crops (grey-level std < 10: sky, black borders) are redrawn.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FORMAT = 1
SEED = 20240514
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
APT_HINT = "sudo apt-get install {}"

Sample = np.ndarray  # uint8 (H, W) grey or (H, W, 3) RGB


class SourceMissing(Exception):
    """A task's offline source is not installed; the message says how to install it."""


@dataclass
class Task:
    name: str
    kind: str
    description: str
    sources: list[str]
    classes: list[str]
    per_class: tuple[int, int, int]  # train, val, test at scale 1
    make: Callable[[Task, np.random.Generator, dict[str, int]], dict[str, list[tuple[int, Sample]]]]
    img_size: int = 64
    epochs: int = 10
    hflip: bool = True
    notes: dict[str, Any] = field(default_factory=dict)


# ---- helpers ------------------------------------------------------------------------------------------------


def task_seed(name: str, seed: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def digest(arr: np.ndarray) -> str:
    return hashlib.sha1(f"{arr.shape}".encode() + np.ascontiguousarray(arr).tobytes()).hexdigest()


class Unique:
    """Refuses an image whose pixels were already used anywhere in the task (train/val/test leakage)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def add(self, arr: np.ndarray) -> bool:
        key = digest(arr)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def generate(
    draw: Callable[[np.random.Generator, int], Sample], n_classes: int, counts: dict[str, int], rng: np.random.Generator
) -> dict[str, list[tuple[int, Sample]]]:
    """counts[split] images per class from draw(rng, class), no two alike; classes interleaved within a split."""
    unique = Unique()
    out: dict[str, list[tuple[int, Sample]]] = {}
    for split in SPLITS:
        items = []
        for _ in range(counts[split]):
            for c in range(n_classes):
                for _attempt in range(1000):
                    arr = draw(rng, c)
                    if unique.add(arr):
                        break
                else:
                    raise RuntimeError(f"could not draw a new image of class {c} in 1000 attempts")
                items.append((c, arr))
        out[split] = items
    return out


def take(pool: np.ndarray, labels: np.ndarray, classes: list[int], n: int, rng: np.random.Generator,
         unique: Unique, used: set[int]) -> list[tuple[int, Sample]]:
    """n new images per class from pool (seeded order), skipping duplicates and indices already used."""
    items = []
    for ci, c in enumerate(classes):
        got = 0
        for i in rng.permutation(np.flatnonzero(labels == c)):
            if got == n:
                break
            if int(i) in used or not unique.add(pool[i]):
                continue
            used.add(int(i))
            items.append((ci, pool[i]))
            got += 1
        if got < n:
            raise RuntimeError(f"class {c} has only {got} distinct images, {n} asked")
    return items


def add_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    out = img.astype(np.float32) + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def contrasting(rng: np.random.Generator, against: np.ndarray, min_diff: float = 70.0) -> np.ndarray:
    """A random RGB colour whose luminance differs from `against` by at least min_diff."""
    lum_w = np.array([0.299, 0.587, 0.114])
    for _ in range(200):
        c = rng.integers(0, 256, 3)
        if abs(float(c @ lum_w) - float(against @ lum_w)) >= min_diff:
            return c
    return 255 - against


# ---- Fashion-MNIST (dataset-fashion-mnist) ---------------------------------------------------------------------


def _fmnist_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from thawline import ThawlineError
    from thawline.data import find_raw_files, read_idx

    try:
        raw = find_raw_files()
    except ThawlineError:
        raise SourceMissing(APT_HINT.format("dataset-fashion-mnist")) from None
    tr_x, tr_y = (read_idx(p) for p in raw["train"])
    te_x, te_y = (read_idx(p) for p in raw["test"])
    return tr_x, tr_y, te_x, te_y


def make_fmnist(task: Task, rng: np.random.Generator, counts: dict[str, int]) -> dict[str, list]:
    from thawline.data import FASHION_MNIST_CLASSES

    tr_x, tr_y, te_x, te_y = _fmnist_arrays()
    ids = [FASHION_MNIST_CLASSES.index(c) for c in task.classes]
    unique, used_train, used_test = Unique(), set(), set()
    return {
        "train": take(tr_x, tr_y, ids, counts["train"], rng, unique, used_train),
        "val": take(tr_x, tr_y, ids, counts["val"], rng, unique, used_train),
        "test": take(te_x, te_y, ids, counts["test"], rng, unique, used_test),
    }


# ---- fonts (Debian font packages) ------------------------------------------------------------------------------

FONT_DIRS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype"))
# (file-name prefix, package, style); the first matching prefix wins, so "Mono" families come before "Sans".
FONT_RULES = (
    ("DejaVuMathTeXGyre", None, None),
    ("DejaVuSansMono", "fonts-dejavu-core", "mono"),
    ("DejaVuSerif", "fonts-dejavu-core", "serif"),
    ("DejaVuSans", "fonts-dejavu-core", "sans"),
    ("LiberationMono", "fonts-liberation", "mono"),
    ("LiberationSerif", "fonts-liberation", "serif"),
    ("LiberationSans", "fonts-liberation", "sans"),
    ("FreeMono", "fonts-freefont-ttf", "mono"),
    ("FreeSerif", "fonts-freefont-ttf", "serif"),
    ("FreeSans", "fonts-freefont-ttf", "sans"),
    ("Carlito", "fonts-crosextra-carlito", "sans"),
    ("Caladea", "fonts-crosextra-caladea", "serif"),
    ("NimbusMonoPS", "fonts-urw-base35", "mono"),
    ("NimbusSans", "fonts-urw-base35", "sans"),
    ("URWGothic", "fonts-urw-base35", "sans"),
    ("NimbusRoman", "fonts-urw-base35", "serif"),
    ("C059", "fonts-urw-base35", "serif"),
    ("P052", "fonts-urw-base35", "serif"),
    ("URWBookman", "fonts-urw-base35", "serif"),
)
FONT_SPLIT_PACKAGES = {
    "train": ("fonts-dejavu-core", "fonts-liberation", "fonts-freefont-ttf"),
    "val": ("fonts-crosextra-carlito", "fonts-crosextra-caladea"),
    "test": ("fonts-urw-base35",),
}


@dataclass(frozen=True)
class Face:
    path: str
    package: str
    style: str


def find_fonts() -> list[Face]:
    """Every font file of the packages above (symbol, dingbat, script and math fonts left out), sorted by name."""
    faces = []
    for base in FONT_DIRS:
        for path in sorted(base.rglob("*")):
            if path.suffix.lower() not in (".ttf", ".otf"):
                continue
            for prefix, package, style in FONT_RULES:
                if path.name.startswith(prefix):
                    if package:
                        faces.append(Face(str(path), package, style))
                    break
    return sorted(faces, key=lambda f: Path(f.path).name)


_FONTS: dict[str, ImageFont.FreeTypeFont] = {}


def render_text(text: str, face: Face, rng: np.random.Generator, canvas: int, height: tuple[float, float],
                max_width: float, max_rotation: float) -> np.ndarray:
    """Dark text on a light background, randomly sized, rotated, placed, with contrast and noise."""
    font = _FONTS.get(face.path) or _FONTS.setdefault(face.path, ImageFont.truetype(face.path, 96))
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(mask).text((4 - left, 4 - top), text, fill=255, font=font)
    mask = mask.rotate(float(rng.uniform(-max_rotation, max_rotation)), Image.Resampling.BICUBIC, expand=True)
    box = mask.getbbox()
    if box is None:
        raise RuntimeError(f"{face.path} renders nothing for {text!r}")
    mask = mask.crop(box)
    w, h = mask.size
    scale = min(rng.uniform(*height) * canvas / h, max_width * canvas / w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    mask = mask.resize(size, Image.Resampling.LANCZOS)
    x = int(rng.integers(0, canvas - size[0] + 1))
    y = int(rng.integers(0, canvas - size[1] + 1))
    alpha = np.zeros((canvas, canvas), np.float32)
    alpha[y : y + size[1], x : x + size[0]] = np.asarray(mask, np.float32) / 255.0
    bg, fg = rng.uniform(160, 255), rng.uniform(0, 100)
    img = bg + (fg - bg) * alpha
    return add_noise(img, rng, float(rng.uniform(0, 8)))


def _faces_by(key: Callable[[Face], Any]) -> dict[Any, list[Face]]:
    groups: dict[Any, list[Face]] = {}
    for face in find_fonts():
        groups.setdefault(key(face), []).append(face)
    return groups


def make_font_chars(task: Task, rng: np.random.Generator, counts: dict[str, int]) -> dict[str, list]:
    by_package = _faces_by(lambda f: f.package)
    pools = {}
    for split, packages in FONT_SPLIT_PACKAGES.items():
        missing = [p for p in packages if p not in by_package]
        if missing:
            raise SourceMissing(APT_HINT.format(" ".join(missing)))
        pools[split] = [f for p in packages for f in by_package[p]]
    unique = Unique()
    out = {}
    for split in SPLITS:
        pool, items = pools[split], []
        for ci, char in enumerate(task.classes):
            order = rng.permutation(len(pool))  # cycle through the split's fonts in a seeded order per class
            for k in range(counts[split]):
                for _attempt in range(100):
                    arr = render_text(char, pool[order[k % len(pool)]], rng, 64, (0.55, 0.85), 0.85, 8.0)
                    if unique.add(arr):
                        break
                else:
                    raise RuntimeError(f"no new rendering of {char!r} in 100 attempts")
                items.append((ci, arr))
        out[split] = items
    return out


FONT_STYLE_CHARS = {"train": "ABCDEFGHIJKLMabcdefghijklm", "val": "NOPQnopq", "test": "RSTUVWXYZrstuvwxyz"}


def make_font_style(task: Task, rng: np.random.Generator, counts: dict[str, int]) -> dict[str, list]:
    by_style = _faces_by(lambda f: f.style)
    missing = [s for s in task.classes if s not in by_style]
    if missing:
        raise SourceMissing(APT_HINT.format("fonts-dejavu-core fonts-liberation fonts-freefont-ttf"))
    unique = Unique()
    out = {}
    for split in SPLITS:
        chars, items = FONT_STYLE_CHARS[split], []
        for ci, style in enumerate(task.classes):
            pool = by_style[style]
            for _ in range(counts[split]):
                for _attempt in range(100):
                    text = "".join(chars[int(i)] for i in rng.integers(0, len(chars), 3))
                    face = pool[int(rng.integers(0, len(pool)))]
                    arr = render_text(text, face, rng, 96, (0.3, 0.5), 0.9, 4.0)
                    if unique.add(arr):
                        break
                else:
                    raise RuntimeError(f"no new {style} rendering in 100 attempts")
                items.append((ci, arr))
        out[split] = items
    return out


# ---- procedural drawings -------------------------------------------------------------------------------------

SS = 4  # supersampling factor for anti-aliased shapes


def _canvas(rng: np.random.Generator, size: int) -> tuple[Image.Image, ImageDraw.ImageDraw, np.ndarray]:
    bg = rng.integers(0, 256, 3)
    img = Image.new("RGB", (size * SS, size * SS), tuple(int(v) for v in bg))
    return img, ImageDraw.Draw(img), bg


def _finish(img: Image.Image, rng: np.random.Generator, sigma: tuple[float, float] = (2, 10)) -> np.ndarray:
    small = np.asarray(img.reduce(SS), np.uint8)
    return add_noise(small, rng, float(rng.uniform(*sigma)))


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    k = {"triangle": 3, "square": 4, "pentagon": 5}[kind]
    return [(cx + r * np.cos(angle + 2 * np.pi * j / k), cy + r * np.sin(angle + 2 * np.pi * j / k)) for j in range(k)]


def _shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float, colour) -> None:
    fill = tuple(int(v) for v in colour)
    s = SS
    if kind == "circle":
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=fill)
    else:
        draw.polygon([(x * s, y * s) for x, y in _polygon(kind, cx, cy, r, angle)], fill=fill)


def _place(rng: np.random.Generator, radii: list[float], size: int, taken: list[tuple[float, float, float]],
           gap: float = 2.0) -> list[tuple[float, float, float]]:
    """Centres for discs of the given radii, inside the image and not touching each other or `taken`."""
    placed = list(taken)
    for _ in range(500):
        placed = list(taken)
        for r in radii:
            for _try in range(200):
                x, y = rng.uniform(r + 1, size - r - 1, 2)
                if all((x - px) ** 2 + (y - py) ** 2 > (r + pr + gap) ** 2 for px, py, pr in placed):
                    placed.append((float(x), float(y), r))
                    break
            else:
                break
        if len(placed) == len(taken) + len(radii):
            return placed[len(taken) :]
    raise RuntimeError("could not place the shapes")


SHAPES = ("circle", "square", "triangle", "pentagon")


def draw_count(rng: np.random.Generator, label: int, size: int = 64) -> np.ndarray:
    img, draw, bg = _canvas(rng, size)
    radii = [float(rng.uniform(3.5, 7.5)) for _ in range(label + 1)]
    for x, y, r in _place(rng, radii, size, []):
        kind = SHAPES[int(rng.integers(0, len(SHAPES)))]
        _shape(draw, kind, x, y, r, float(rng.uniform(0, 2 * np.pi)), contrasting(rng, bg))
    return _finish(img, rng)


ANGLES = (0, 30, 60, 90, 120, 150)


def draw_orientation(rng: np.random.Generator, label: int, size: int = 64) -> np.ndarray:
    img, draw, bg = _canvas(rng, size)
    for x, y, r in _place(rng, [float(rng.uniform(1.5, 3.0)) for _ in range(4)], size, []):  # isotropic distractors
        _shape(draw, "circle", x, y, r, 0.0, contrasting(rng, bg, 40))
    theta = np.deg2rad(ANGLES[label] + rng.uniform(-7, 7))
    length, width = rng.uniform(22, 40), rng.uniform(3, 6)
    half = 0.5 * length * abs(np.cos(theta)) + 0.5 * width, 0.5 * length * abs(np.sin(theta)) + 0.5 * width
    cx, cy = rng.uniform(half[0] + 1, size - half[0] - 1), rng.uniform(half[1] + 1, size - half[1] - 1)
    d = np.array([np.cos(theta), -np.sin(theta)])  # y grows downwards: angles are counter-clockwise on screen
    n = np.array([-d[1], d[0]])
    c = np.array([cx, cy])
    corners = [c + a * 0.5 * length * d + b * 0.5 * width * n for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    colour = tuple(int(v) for v in contrasting(rng, bg))
    draw.polygon([(float(p[0]) * SS, float(p[1]) * SS) for p in corners], fill=colour)
    return _finish(img, rng)


CELLS = ("top_left", "top_middle", "top_right", "middle_left", "center", "middle_right",
         "bottom_left", "bottom_middle", "bottom_right")


def draw_position(rng: np.random.Generator, label: int, size: int = 64) -> np.ndarray:
    img = Image.new("RGB", (size * SS, size * SS), tuple(int(v) for v in rng.integers(0, 90, 3)))
    draw = ImageDraw.Draw(img)
    row, col = divmod(label, 3)
    cell = size / 3
    r = float(rng.uniform(3.5, 5.5))
    x = float(rng.uniform(col * cell + r + 0.5, (col + 1) * cell - r - 0.5))
    y = float(rng.uniform(row * cell + r + 0.5, (row + 1) * cell - r - 0.5))
    target = (x, y, r)
    red = (int(rng.integers(210, 256)), int(rng.integers(0, 50)), int(rng.integers(0, 50)))
    _shape(draw, "circle", x, y, r, 0.0, red)
    palette = ((40, 90, 255), (40, 220, 60), (240, 230, 40), (235, 235, 235), (200, 60, 230))
    for dx, dy, dr in _place(rng, [float(rng.uniform(3, 5.5)) for _ in range(3)], size, [target]):
        kind = ("square", "triangle", "circle")[int(rng.integers(0, 3))]
        colour = np.array(palette[int(rng.integers(0, len(palette)))]) + rng.integers(-15, 16, 3)
        _shape(draw, kind, dx, dy, dr, float(rng.uniform(0, 2 * np.pi)), np.clip(colour, 0, 255))
    return _finish(img, rng)


TEXTURES = ("stripes", "checker", "dots", "grid", "rings", "blobs", "waves", "spiral")


def draw_texture(rng: np.random.Generator, label: int, size: int = 64) -> np.ndarray:
    n = size * 2
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float64) + 0.5) / n
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    f = rng.uniform(3, 8)
    phase = rng.uniform(0, 2 * np.pi, 2)
    kind = TEXTURES[label]
    if kind == "stripes":
        s = np.sin(2 * np.pi * f * u + phase[0])
    elif kind == "checker":
        s = np.sin(2 * np.pi * f * u + phase[0]) * np.sin(2 * np.pi * f * v + phase[1]) * 2
    elif kind == "dots":
        du, dv = (f * u + phase[0]) % 1 - 0.5, (f * v + phase[1]) % 1 - 0.5
        s = (rng.uniform(0.18, 0.32) - np.sqrt(du**2 + dv**2)) * 10
    elif kind == "grid":
        du, dv = np.abs((f * u + phase[0]) % 1 - 0.5), np.abs((f * v + phase[1]) % 1 - 0.5)
        s = (np.maximum(du, dv) - (0.5 - rng.uniform(0.08, 0.16))) * 20
    elif kind in ("rings", "spiral"):
        cx, cy = rng.uniform(-0.2, 1.2, 2)
        r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        arms = int(rng.integers(2, 5)) if kind == "spiral" else 0
        s = np.sin(2 * np.pi * f * 1.3 * r + arms * np.arctan2(yy - cy, xx - cx) + phase[0])
    elif kind == "blobs":
        k = int(rng.integers(4, 9))
        low = Image.fromarray(rng.normal(0, 1, (k, k)).astype(np.float32), "F")
        s = np.asarray(low.resize((n, n), Image.Resampling.BICUBIC), np.float64)
        s = (s - np.median(s)) * 3
    else:  # waves
        s = np.sin(2 * np.pi * f * (u + rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * rng.uniform(1, 3) * v + phase[1]))
                   + phase[0])
    a = 0.5 + 0.5 * np.tanh(s * rng.uniform(1.5, 6))
    c1 = rng.integers(0, 256, 3).astype(np.float64)
    c2 = contrasting(rng, c1.astype(np.int64), 60).astype(np.float64)
    shade = 1 + rng.uniform(-0.25, 0.25) * (xx - 0.5) + rng.uniform(-0.25, 0.25) * (yy - 0.5)
    img = (c1 + (c2 - c1) * a[..., None]) * shade[..., None]
    img = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    return add_noise(np.clip(img, 0, 255), rng, float(rng.uniform(3, 15)))


def procedural(draw: Callable[[np.random.Generator, int], np.ndarray]):
    def make(task: Task, rng: np.random.Generator, counts: dict[str, int]) -> dict[str, list]:
        return generate(draw, len(task.classes), counts, rng)

    return make


# ---- scikit-learn digits, scikit-image faces -----------------------------------------------------------------


def _split_pool(images: np.ndarray, labels: np.ndarray, n_classes: int, counts: dict[str, int],
                rng: np.random.Generator) -> dict[str, list]:
    unique, used = Unique(), set()
    return {s: take(images, labels, list(range(n_classes)), counts[s], rng, unique, used) for s in SPLITS}


def make_digits(task: Task, rng: np.random.Generator, counts: dict[str, int]) -> dict[str, list]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SourceMissing("pip install scikit-learn (or the bench extra: pip install -e '.[bench]')") from None
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    return _split_pool(images, d.target, 10, counts, rng)


def make_faces(task: Task, rng: np.random.Generator, counts: dict[str, int]) -> dict[str, list]:
    try:
        from skimage import data
    except ImportError:
        raise SourceMissing("pip install scikit-image (or the bench extra: pip install -e '.[bench]')") from None
    faces = data.lfw_subset()  # 100 faces then 100 non-faces, 25x25 floats in [0, 1]
    images = np.rint(np.clip(faces, 0, 1) * 255).astype(np.uint8)
    labels = np.repeat([0, 1], [100, len(images) - 100])
    return _split_pool(images, labels, 2, counts, rng)


# ---- crops of real photographs -------------------------------------------------------------------------------

JIGZO_DIR = Path("/usr/share/games/jigzo/puzzles/00_default")
JIGZO_PHOTOS = {
    "bike": "bike-3x4", "bird": "bird-2x3", "blackberry": "blackberry-3x3", "castle": "castle-6x3",
    "clouds": "clouds-4x4", "gorilla": "gorilla2-3x3", "helicopter": "heli-4x3", "horse": "horse-4x3",
    "penguin": "penguin-3x2", "slide": "tobogan-4x3", "train": "train-2x2", "windmill": "windmill-4x4",
}


def read_pzl(path: Path) -> Image.Image:
    """The photograph inside a jigzo .pzl: 4 header lines, then `name\\nsize\\n<bytes>` entries (texture map,
    thumbnail, piece masks, texture JPEG); the map's `image x y w h` line is where the photo sits in the texture."""
    data = path.read_bytes()
    header = re.match(rb"PzlF\n[^\n]*\n[^\n]*\n[^\n]*\n", data)
    if header is None:
        raise ValueError(f"{path}: not a jigzo puzzle file")
    pos, entries = header.end(), {}
    while pos < len(data):
        nl = data.index(b"\n", pos)
        nl2 = data.index(b"\n", nl + 1)
        name, size = data[pos:nl].decode(), int(data[nl + 1 : nl2])
        entries[name] = data[nl2 + 1 : nl2 + 1 + size]
        pos = nl2 + 1 + size
    texture_map = next(v for k, v in entries.items() if k.endswith(".map")).decode()
    box = re.search(r"^image (\d+) (\d+) (\d+) (\d+)", texture_map, re.M)
    jpeg = next(v for k, v in entries.items() if k.endswith(".jpg") and not k.endswith("-t.jpg"))
    x, y, w, h = (int(g) for g in box.groups())
    return Image.open(io.BytesIO(jpeg)).convert("RGB").crop((x, y, x + w, y + h))


def jigzo_photos() -> list[Image.Image]:
    paths = [JIGZO_DIR / f"{stem}.pzl" for stem in JIGZO_PHOTOS.values()]
    if not all(p.is_file() for p in paths):
        raise SourceMissing(APT_HINT.format("jigzo-data"))
    return [read_pzl(p) for p in paths]


SCENES = ("astronaut", "cat", "coffee", "rocket", "motorcycle", "galaxies", "tissue", "retina", "temple", "flower")


def scene_photos() -> list[Image.Image]:
    try:
        from skimage import data
        from sklearn.datasets import load_sample_image
    except ImportError:
        raise SourceMissing("pip install scikit-image scikit-learn (or pip install -e '.[bench]')") from None
    arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.stereo_motorcycle()[0],
              data.hubble_deep_field(), data.immunohistochemistry(), data.retina(),
              load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    return [Image.fromarray(np.asarray(a, np.uint8)).convert("RGB") for a in arrays]


TILE_SPLITS = {"train": 10, "val": 2, "test": 4}  # of a 4x4 grid of tiles per photo


def make_crops(photos: list[Image.Image], counts: dict[str, int], rng: np.random.Generator,
               out_size: int = 96, short_side: int = 480, grid: int = 4) -> dict[str, list]:
    """Crops classified by source photo; each split crops only inside its own tiles of each photo."""
    unique = Unique()
    plans = []
    for photo in photos:
        scale = short_side / min(photo.size)
        if scale < 1:
            photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
        order = [int(t) for t in rng.permutation(grid * grid)]
        tiles, start = {}, 0
        for split in SPLITS:
            tiles[split] = order[start : start + TILE_SPLITS[split]]
            start += TILE_SPLITS[split]
        plans.append((photo, tiles))
    out: dict[str, list] = {s: [] for s in SPLITS}
    for split in SPLITS:
        for ci, (photo, tiles) in enumerate(plans):
            tw, th = photo.width // grid, photo.height // grid
            got = 0
            for _attempt in range(200 * counts[split]):
                if got == counts[split]:
                    break
                t = tiles[split][int(rng.integers(0, len(tiles[split])))]
                x0, y0 = (t % grid) * tw, (t // grid) * th
                side = int(rng.uniform(0.7, 1.0) * min(tw, th))
                x = x0 + int(rng.integers(0, tw - side + 1))
                y = y0 + int(rng.integers(0, th - side + 1))
                crop = photo.crop((x, y, x + side, y + side)).resize((out_size, out_size), Image.Resampling.BICUBIC)
                arr = np.asarray(crop, np.uint8)
                if arr.mean(axis=2).std() < 10 or not unique.add(arr):
                    continue
                out[split].append((ci, arr))
                got += 1
            if got < counts[split]:
                raise RuntimeError(f"photo {ci}: only {got} usable {split} crops")
    return out


def make_photo_objects(task: Task, rng: np.random.Generator, counts: dict[str, int]) -> dict[str, list]:
    return make_crops(jigzo_photos(), counts, rng)


def make_photo_scenes(task: Task, rng: np.random.Generator, counts: dict[str, int]) -> dict[str, list]:
    return make_crops(scene_photos(), counts, rng)


# ---- the suite ------------------------------------------------------------------------------------------------

FMNIST_TOPS = ["T-shirt_top", "Pullover", "Coat", "Shirt"]
FONT_PACKAGES = ["fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation", "fonts-freefont-ttf",
                 "fonts-crosextra-carlito", "fonts-crosextra-caladea", "fonts-urw-base35"]


def _fmnist_classes() -> list[str]:
    from thawline.data import FASHION_MNIST_CLASSES

    return list(FASHION_MNIST_CLASSES)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("fmnist-20", "clothing photos, few-shot", "Fashion-MNIST, 20 train images per class",
             ["dataset-fashion-mnist"], _fmnist_classes(), (20, 20, 100), make_fmnist),
        Task("fmnist-500", "clothing photos, mid-size", "Fashion-MNIST, 500 train images per class",
             ["dataset-fashion-mnist"], _fmnist_classes(), (500, 50, 200), make_fmnist, epochs=4),
        Task("fmnist-tops", "fine-grained clothing", "Fashion-MNIST upper-body classes only (the confusable ones)",
             ["dataset-fashion-mnist"], FMNIST_TOPS, (75, 25, 200), make_fmnist),
        Task("font-chars", "printed characters, unseen fonts",
             "capital letters; train fonts: DejaVu, Liberation, FreeFont; val: Carlito, Caladea; test: URW base35",
             FONT_PACKAGES, list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), (12, 4, 10), make_font_chars, hflip=False),
        Task("font-style", "typeface style, unseen letters",
             "sans / serif / monospace from 3-letter strings; train letters A-M, val N-Q, test R-Z (both cases)",
             FONT_PACKAGES, ["sans", "serif", "mono"], (100, 30, 100), make_font_style, img_size=96, hflip=False),
        Task("count-shapes", "counting", "how many shapes (1-5): circles, squares, triangles, pentagons",
             ["numpy", "Pillow"], [f"count_{i}" for i in range(1, 6)], (60, 20, 60), procedural(draw_count)),
        Task("orientation", "orientation", "angle of a bar (0-150 degrees in steps of 30, +-7) among round dots",
             ["numpy", "Pillow"], [f"deg{a:03d}" for a in ANGLES], (50, 15, 50), procedural(draw_orientation),
             hflip=False),
        Task("position", "spatial position", "3x3 grid cell of the red disc, with three distractor shapes",
             ["numpy", "Pillow"], list(CELLS), (30, 10, 30), procedural(draw_position), hflip=False),
        Task("textures", "procedural textures", "random frequency, rotation, colours, shading and noise",
             ["numpy", "Pillow"], list(TEXTURES), (35, 10, 40), procedural(draw_texture)),
        Task("digits", "handwritten digits, 8x8", "scikit-learn's load_digits (UCI optical digits)",
             ["scikit-learn"], [str(i) for i in range(10)], (30, 15, 80), make_digits, hflip=False),
        Task("photo-objects", "real photographs (crops by source photo)",
             "crops of the 12 camera photos in jigzo-data; test crops from tiles never seen in training",
             ["jigzo-data"], list(JIGZO_PHOTOS), (25, 8, 20), make_photo_objects, img_size=96),
        Task("photo-scenes", "real photographs (crops by source photo)",
             "crops of 10 photos shipped by scikit-image and scikit-learn (incl. a microscope and a telescope "
             "image); test crops from tiles never seen in training",
             ["scikit-image", "scikit-learn"], list(SCENES), (30, 8, 20), make_photo_scenes, img_size=96),
        Task("faces", "real photographs (faces)", "face vs non-face, the LFW subset shipped by scikit-image",
             ["scikit-image"], ["face", "non_face"], (30, 20, 50), make_faces),
    )
}


def scaled_counts(task: Task, scale: float) -> dict[str, int]:
    floor = {"train": 2, "val": 1, "test": 2}
    return {s: max(floor[s], round(n * scale)) for s, n in zip(SPLITS, task.per_class, strict=True)}


def _save(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB").save(path, format="PNG", optimize=False, compress_level=6)


def build_task(task: Task, out: Path, scale: float = 1.0, seed: int = SEED, force: bool = False) -> dict[str, Any]:
    """Write out/<task.name> (atomically: a temporary folder renamed into place) and return its manifest."""
    dest = out / task.name
    request = {"format": FORMAT, "scale": scale, "seed": seed}
    manifest_path = dest / MANIFEST
    if manifest_path.is_file() and not force:
        try:
            existing = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            existing = {}
        if existing.get("request") == request:
            return existing
    counts = scaled_counts(task, scale)
    samples = task.make(task, np.random.default_rng(task_seed(task.name, seed)), counts)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task.name}.tmp-", dir=out))
    try:
        per_class: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            per_class[split] = {c: 0 for c in task.classes}
            for c in task.classes:
                (tmp / split / c).mkdir(parents=True)
            for i, (ci, arr) in enumerate(samples[split]):
                cls = task.classes[ci]
                _save(arr, tmp / split / cls / f"{split}{i:05d}.png")
                per_class[split][cls] += 1
        first = samples["train"][0][1]
        manifest = {
            "request": request,
            "task": task.name,
            "kind": task.kind,
            "description": task.description,
            "sources": task.sources,
            "classes": task.classes,
            "n_classes": len(task.classes),
            "counts": {s: sum(per_class[s].values()) for s in SPLITS},
            "per_class": per_class,
            "stored_size": list(first.shape[:2]),
            "channels": 1 if first.ndim == 2 else 3,
            "img_size": task.img_size,
            "epochs": task.epochs,
            "hflip": task.hflip,
            **task.notes,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


SUMMARY_KEYS = ("task", "kind", "n_classes", "counts", "img_size", "epochs", "hflip", "sources")


def write_suite_manifest(out: Path) -> dict[str, Any]:
    """OUT/manifest.json: every task folder in OUT with a manifest, in suite order (unknown names last)."""
    order = list(TASKS)
    found = []
    for path in sorted(out.glob(f"*/{MANIFEST}")):
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        found.append({k: m.get(k) for k in SUMMARY_KEYS})
    found.sort(key=lambda m: (order.index(m["task"]) if m["task"] in order else len(order), m["task"]))
    suite = {"format": FORMAT, "tasks": found}
    (out / MANIFEST).write_text(json.dumps(suite, indent=2) + "\n")
    return suite


def build_suite(out: str | Path, tasks: list[str] | None = None, scale: float = 1.0, seed: int = SEED,
                force: bool = False, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Build the named tasks (all by default) into out; returns {"built": {name: manifest}, "skipped": {...}}."""
    out = Path(out)
    names = tasks or list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise KeyError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    built, skipped = {}, {}
    for name in names:
        try:
            built[name] = build_task(TASKS[name], out, scale, seed, force)
        except SourceMissing as e:
            skipped[name] = str(e)
            if log:
                log(f"{name:14s} skipped: source missing; install it with `{e}`")
            continue
        if log:
            m = built[name]
            c = m["counts"]
            log(f"{name:14s} {m['n_classes']:3d} classes  train {c['train']:5d}  val {c['val']:4d}  "
                f"test {c['test']:5d}  img_size {m['img_size']}  ({m['kind']})")
    if built:
        write_suite_manifest(out)
    return {"built": built, "skipped": skipped}


def iter_images(root: Path) -> Iterator[Path]:
    yield from sorted(p for p in root.rglob("*.png") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).with_name("data")), help="output folder")
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every per-class count (tests: 0.1)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--force", action="store_true", help="rebuild tasks that are already built")
    parser.add_argument("--list", action="store_true", help="list the tasks and their sources, build nothing")
    args = parser.parse_args(argv)
    if args.list:
        for t in TASKS.values():
            tr, va, te = t.per_class
            print(f"{t.name:14s} {len(t.classes):3d} classes  {tr}/{va}/{te} per class  img_size {t.img_size}  "
                  f"{t.kind}  [{', '.join(t.sources)}]")
        return 0
    if args.scale <= 0:
        parser.error("--scale must be positive")
    names = [n.strip() for n in args.tasks.split(",") if n.strip()] or None
    try:
        result = build_suite(args.out, names, args.scale, args.seed, args.force)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    print(f"{len(result['built'])} task(s) in {args.out}" + (f", {len(result['skipped'])} skipped" if result["skipped"]
                                                             else ""))
    return 1 if result["skipped"] and not result["built"] else 0


if __name__ == "__main__":
    sys.exit(main())
