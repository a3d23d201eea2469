"""Shifted copies of a split: common corruptions at several severities, in the spirit of ImageNet-C.

    thawline data shift data/my-set --out data/my-set-shift --kinds noise,blur --severities 1,3,5
    -> data/my-set-shift/<kind>-<severity>/<class>/<file>.png  + manifest.json

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019.
Every kind and severity is one entry of `CORRUPTIONS` (severities 1..5, mildest first). Noise, contrast and JPEG
use ImageNet-C's values; blur uses CIFAR-10-C's sigmas per 32 pixels of the shorter side (so a 28-px Fashion-MNIST
image and a 224-px photo are blurred alike); rotation (not in ImageNet-C) turns by a few degrees, its direction
drawn per image. Corruptions apply at the stored resolution, as the split is stored. The random draws of an image
come from a seed made of (seed, kind, class/file), the same at every severity: a rerun writes the same pixels, and
a higher severity scales the same noise (or turns the same way) further. A grayscale image stays grayscale.

The tree is written in a temp folder beside `--out` and renamed into place; `compare --shift-test DIR` evaluates
every strategy's best weights on each set (`shift_sets` reads the folder). PIL and numpy only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from thawline.core.atomic import atomic_folder
from thawline.core.errors import ThawlineError, close_matches
from thawline.core.runformat import SHIFT_JSON, SUMMARY
from thawline.data.files import Skipped, Walker
from thawline.data.images import BadImage, open_rgb
from thawline.data.splits import find_layout

MANIFEST = "manifest.json"
FORMAT = 1
SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SEVERITIES = (1, 3, 5)


# ---- the corruptions: one function each on float32 HxWxC in [0, 1] ----------------------------------------------


def _noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.standard_normal(x.shape, dtype=np.float32) * std


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(x: np.ndarray, sigma_per_32: float, rng: np.random.Generator) -> np.ndarray:
    """Separable Gaussian blur, reflected at the borders; sigma scales with the shorter side."""
    sigma = sigma_per_32 * min(x.shape[:2]) / 32
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        padded = np.pad(x, pad, mode="reflect" if x.shape[axis] > r else "edge")
        n = x.shape[axis]
        x = sum(k[i] * np.take(padded, range(i, i + n), axis=axis) for i in range(len(k)))
    return x


def _contrast(x: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * keep + mean


def _jpeg(x: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    img = _to_image(x)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as back:
        return _to_float(np.asarray(back.convert(img.mode)))


def _rotate(x: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Turn by `degrees` (direction drawn per image), corners filled with the mean border colour."""
    img = _to_image(x)
    u8 = np.asarray(img).reshape(x.shape[0], x.shape[1], -1)
    border = np.concatenate([u8[0], u8[-1], u8[:, 0], u8[:, -1]]).mean(axis=0).round().astype(int)
    fill: Any = int(border[0]) if img.mode == "L" else tuple(int(v) for v in border)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    turned = img.rotate(sign * degrees, resample=Image.Resampling.BICUBIC, fillcolor=fill)
    return _to_float(np.asarray(turned))


@dataclass(frozen=True)
class Corruption:
    """One kind: what its parameter means, the parameter at severities 1..5, and the function applying it."""

    what: str
    params: tuple[float, float, float, float, float]
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

    def param(self, severity: int) -> float:
        return self.params[severity - 1]


CORRUPTIONS: dict[str, Corruption] = {
    "noise": Corruption("Gaussian noise, std on the 0..1 pixel scale (ImageNet-C)",
                        (0.08, 0.12, 0.18, 0.26, 0.38), _noise),
    "blur": Corruption("Gaussian blur, sigma in pixels per 32 px of the shorter side (CIFAR-10-C)",
                       (0.4, 0.6, 0.7, 0.8, 1.0), _blur),
    "contrast": Corruption("contrast kept: pixels pulled toward the channel mean (ImageNet-C)",
                           (0.4, 0.3, 0.2, 0.1, 0.05), _contrast),
    "jpeg": Corruption("JPEG re-compression quality (ImageNet-C)", (25, 18, 15, 10, 7), _jpeg),
    "rotate": Corruption("rotation in degrees, direction random per image", (3, 6, 10, 15, 20), _rotate),
}  # fmt: skip


# ---- pixels ------------------------------------------------------------------------------------------------------


def _to_float(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32) / 255.0
    return a[..., None] if a.ndim == 2 else a


def _to_image(x: np.ndarray) -> Image.Image:
    u8 = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(u8[..., 0], "L") if u8.shape[-1] == 1 else Image.fromarray(u8, "RGB")


def load_pixels(path: str | os.PathLike) -> np.ndarray:
    """An image as float32 HxWxC in [0, 1]: C=1 when it is grayscale (every pixel R=G=B), else 3 (BadImage if
    it cannot be read)."""
    rgb = np.asarray(open_rgb(path))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        rgb = rgb[..., :1]
    return _to_float(rgb)


def file_rng(seed: int, kind: str, rel: str) -> np.random.Generator:
    """The draws of one image under one kind: the same at every severity, the same on every machine."""
    digest = hashlib.sha256(f"{seed}:{kind}:{rel}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def corrupt(x: np.ndarray, kind: str, severity: int, rng: np.random.Generator) -> Image.Image:
    """`x` (float HxWxC in [0, 1]) under `kind` at `severity`, as an 8-bit image (L or RGB)."""
    c = CORRUPTIONS[kind]
    return _to_image(c.apply(x, c.param(severity), rng))


# ---- options -----------------------------------------------------------------------------------------------------


def parse_kinds(text: str | Sequence[str] | None) -> list[str]:
    if text is None:
        return list(CORRUPTIONS)
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise ThawlineError(f"--kinds is empty; give a comma-separated list of {', '.join(CORRUPTIONS)}")
    for name in names:
        if name not in CORRUPTIONS:
            raise ThawlineError(
                f"--kinds '{name}' is not a corruption{close_matches(name, CORRUPTIONS)}; "
                f"choose from {', '.join(CORRUPTIONS)}"
            )
    return list(dict.fromkeys(names))


def parse_severities(text: str | Sequence[int] | None) -> list[int]:
    if text is None:
        return list(DEFAULT_SEVERITIES)
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s) for s in text]
    items = [s for s in items if s]
    if not items:
        raise ThawlineError("--severities is empty; give a comma-separated list such as 1,3,5")
    out = []
    for s in items:
        if not s.isdigit() or int(s) not in SEVERITIES:
            raise ThawlineError(f"--severities '{s}': each severity must be a whole number from 1 to 5")
        out.append(int(s))
    return sorted(set(out))


def set_name(kind: str, severity: int) -> str:
    return f"{kind}-{severity}"


# ---- writing a shifted tree --------------------------------------------------------------------------------------


def _split_files(root: Path, folder: Path, skipped: list[Skipped]) -> list[tuple[str, Path]]:
    """(class/relative path, file) of every image below the class folders of `folder`, sorted; what is not an image
    (or has a name that is not UTF-8) goes to `skipped` with why, as in training."""
    walker = Walker(root, skipped)  # as training reads it: each file once, under the class folder it sits in
    classes = walker.class_folders(folder)
    if not classes:
        raise ThawlineError(f"'{folder}' has no class folders; expected {folder}/<class name>/<images>")
    return [(Path(p).relative_to(folder).as_posix(), Path(p)) for c in classes for p in walker.images(folder / c)]


def _out_names(rels: list[str]) -> dict[str, str]:
    """Each image's name in a set: its own name as .png; `a.jpg` beside `a.png` becomes `a_jpg.png`."""
    plain = [str(Path(r).with_suffix(".png")) for r in rels]
    taken = {p for p in plain if plain.count(p) > 1}
    return {
        r: (str(Path(r).with_name(Path(r).name.replace(".", "_") + ".png")) if p in taken else p)
        for r, p in zip(rels, plain, strict=True)
    }


def _check_out(out: Path, split_dir: Path) -> None:
    try:
        inside = out.resolve().is_relative_to(split_dir.resolve())
    except OSError:
        inside = False
    if inside:
        raise ThawlineError(f"--out '{out}' is inside the split it reads ({split_dir}); pass a folder outside it")
    if not out.exists():
        return
    if not out.is_dir():
        raise ThawlineError(f"--out '{out}' is a file; pass a folder (it is created)")
    try:
        doc = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None
    if isinstance(doc, dict) and "kinds" in doc and "sets" in doc:
        return  # a shifted tree written before: replaced as a whole
    if any(out.iterdir()):
        raise ThawlineError(f"--out '{out}' exists and is not a folder `thawline data shift` wrote; pass a new --out")


def write_shifted(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    kinds: str | Sequence[str] | None = None,
    severities: str | Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write every (kind, severity) copy of `data/split` as `out/<kind>-<severity>/<class>/<file>.png` and
    `out/manifest.json`; returns the manifest. A file that is not a readable image is skipped and listed."""
    kind_list, sev_list = parse_kinds(kinds), parse_severities(severities)
    root, out = Path(data), Path(out)
    if not root.is_dir():
        what = "is a file" if root.exists() else "not found"
        raise ThawlineError(f"data folder '{root}' {what}; pass the folder holding {split}/<class>/<images>")
    dirs = find_layout(root).dirs  # split folders under their usual names (valid/ for val, ...)
    split_dir = dirs.get(split, root / split)
    if split not in dirs:
        present = [s for s in ("test", "val", "train") if s in dirs]
        hint = f"pass --split {present[0]}" if present else f"expected {split_dir}/<class name>/<images>"
        raise ThawlineError(f"data folder '{root}' has no {split}/ folder; {hint}")
    _check_out(out, split_dir)
    ignored: list[Skipped] = []
    files = _split_files(root, split_dir, ignored)
    if not files:
        raise ThawlineError(f"'{split_dir}' holds no image files in its class folders")
    names = _out_names([rel for rel, _ in files])

    with atomic_folder(out) as tmp:
        skipped = [{"path": f.path, "reason": f.reason} for f in ignored]
        per_class: dict[str, int] = {}
        for rel, path in files:
            try:
                x = load_pixels(path)
            except BadImage as e:
                skipped.append({"path": str(path), "reason": e.reason})
                continue
            cls = rel.split("/", 1)[0]
            per_class[cls] = per_class.get(cls, 0) + 1
            for kind in kind_list:
                for severity in sev_list:
                    target = tmp / set_name(kind, severity) / names[rel]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    corrupt(x, kind, severity, file_rng(seed, kind, rel)).save(target, format="PNG")
        if not per_class:
            first = skipped[len(ignored)]  # the first that failed to decode
            raise ThawlineError(
                f"no image in '{split_dir}' could be read (e.g. {first['path']}: {first['reason']}); nothing written"
            )
        count = sum(per_class.values())
        manifest = {
            "format": FORMAT,
            "source": str(split_dir.resolve()),
            "split": split,
            "seed": seed,
            "kinds": kind_list,
            "severities": sev_list,
            "sets": {
                set_name(k, s): {"kind": k, "severity": s, "param": CORRUPTIONS[k].param(s), "count": count}
                for k in kind_list
                for s in sev_list
            },
            "parameters": {k: {"what": c.what, "by_severity": list(c.params)} for k, c in CORRUPTIONS.items()},
            "counts": per_class,
            "skipped": skipped,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


# ---- reading a shifted tree (compare --shift-test) --------------------------------------------------------------


def shift_sets(folder: str | os.PathLike, classes: Sequence[str] | None = None) -> dict[str, Path]:
    """{set name: folder} of a shifted tree: the sets its manifest.json lists, else every sub-folder holding class
    folders. With `classes`, each set's class folders must be among them (checked before any training)."""
    root = Path(folder)
    if not root.is_dir():
        what = "is a file" if root.exists() else "not found"
        raise ThawlineError(
            f"--shift-test '{root}' {what}; pass a folder written by `thawline data shift DATA --out DIR`"
        )
    manifest_path = root / MANIFEST
    names: list[str] = []
    if manifest_path.is_file():
        try:
            doc = json.loads(manifest_path.read_text(encoding="utf-8"))
            names = [str(n) for n in doc["sets"]]
        except (OSError, ValueError, KeyError, TypeError):
            raise ThawlineError(
                f"'{manifest_path}' is not a manifest of `thawline data shift`; write the folder again"
            ) from None
    else:
        names = [
            p.name
            for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".") and any(q.is_dir() for q in p.iterdir())
        ]
    sets = {n: root / n for n in names}
    missing = [n for n, p in sets.items() if not p.is_dir()]
    if missing:
        raise ThawlineError(f"--shift-test '{root}' lists set '{missing[0]}' but has no such folder; write it again")
    if not sets:
        raise ThawlineError(
            f"--shift-test '{root}' holds no shifted sets (<set>/<class>/<images>); "
            "write them with `thawline data shift DATA --out DIR`"
        )
    if classes is not None:
        known = set(classes)
        for path in sets.values():
            for cls in sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if cls not in known:
                    raise ThawlineError(
                        f"class folder '{cls}' in {path} is not a class of --data; pass shifted copies of the same "
                        "data (`thawline data shift DATA --out DIR`)"
                    )
    return sets


def shift_summary(accuracy: dict[str, float], clean: float | None) -> dict[str, Any]:
    """The summary.json keys of the comparison table: the mean over the shifted sets, and the in-distribution
    accuracy minus that mean (positive: accuracy lost to the shift)."""
    mean = float(np.mean(list(accuracy.values()))) if accuracy else None
    return {
        SUMMARY.shifted_acc: None if mean is None else round(mean, 6),
        SUMMARY.shift_gap: None if mean is None or clean is None else round(clean - mean, 6),
        SUMMARY.shift_sets: len(accuracy),
    }


def read_shift(run_dir: str | os.PathLike) -> dict[str, float] | None:
    """A run folder's shift.json ({set: accuracy}), or None when it has none or it is unreadable."""
    path = Path(run_dir) / SHIFT_JSON
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    return {str(k): float(v) for k, v in doc.items() if isinstance(v, (int, float))}


def format_manifest(manifest: dict[str, Any], out: str | os.PathLike) -> str:
    sets = list(manifest["sets"])
    count = sum(manifest["counts"].values())
    shown = ", ".join(sets) if len(sets) <= 6 else f"{sets[0]}, {sets[1]}, …, {sets[-1]}"
    lines = [f"wrote {out}: {len(sets)} sets ({shown}) of {count} images each, from {manifest['source']}"]
    if manifest["skipped"]:
        lines.append(f"skipped {len(manifest['skipped'])} unreadable file(s), listed in {Path(out) / MANIFEST}")
    return "\n".join(lines)
