"""The embedded data set: Fashion-MNIST from the Debian package `dataset-fashion-mnist` as an ImageFolder tree.

val is a stratified, seeded split of the official train set; test is the official test set. The tree is
written next to its destination and renamed into place, with `manifest.json` recording what was asked for,
so a rerun with the same arguments is instant and an interrupted one never leaves a half tree behind.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from thawline.core.atomic import atomic_folder
from thawline.core.errors import ThawlineError

CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
SEARCH_DIRS = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path("/usr/share/dataset-fashion-mnist"),
    Path("/usr/share/fashion-mnist"),
)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = "sudo apt-get update && sudo apt-get install dataset-fashion-mnist"
MANIFEST = "manifest.json"
FORMAT = 1


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: big-endian magic with dtype code and rank, then the dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ThawlineError(f"{path} is not an unsigned-byte IDX file; reinstall dataset-fashion-mnist")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ThawlineError(f"{path} is truncated; reinstall dataset-fashion-mnist")
    return arr.reshape(dims)


def find_raw_files(search_dirs: tuple[Path, ...] = SEARCH_DIRS) -> dict[str, tuple[Path, Path]]:
    for base in search_dirs:
        found = {}
        for split, names in FILES.items():
            paths = []
            for name in names:
                candidates = [base / f"{name}.gz", base / name]
                hit = next((c for c in candidates if c.is_file()), None)
                if hit is None:
                    break
                paths.append(hit)
            if len(paths) == 2:
                found[split] = (paths[0], paths[1])
        if len(found) == len(FILES):
            return found
    raise ThawlineError(
        f"Fashion-MNIST files not found (looked in {SEARCH_DIRS[0]}); install them with `{INSTALL_HINT}`"
    )


def stratified_split(
    labels: np.ndarray, val_per_class: int, train_per_class: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class shuffle: the first `val_per_class` go to val, up to `train_per_class` of the rest to train."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        val_idx.append(idx[:val_per_class])
        rest = idx[val_per_class:]
        train_idx.append(rest if train_per_class is None else rest[:train_per_class])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def _cap_per_class(labels: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    if cap is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed + 1)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:cap] for c in np.unique(labels)]))


def _write_split(root: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, prefix: str) -> dict:
    counts = {name: 0 for name in CLASSES}
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in indices:
        name = CLASSES[int(labels[i])]
        Image.fromarray(images[i], "L").save(root / name / f"{prefix}{i:05d}.png", optimize=False)
        counts[name] += 1
    return counts


def prepare_fashion_mnist(
    out: str | Path,
    per_class: int | None = None,
    val_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    search_dirs: tuple[Path, ...] = SEARCH_DIRS,
) -> dict[str, Any]:
    """Write `out/{train,val,test}/<class>/*.png` and return its manifest (reused when arguments match)."""
    out = Path(out)
    for name, value in (
        ("--per-class", per_class),
        ("--val-per-class", val_per_class),
        ("--test-per-class", test_per_class),
    ):
        if value is not None and value < 1:
            raise ThawlineError(f"{name} must be at least 1, got {value}")
    request = {
        "format": FORMAT,
        "dataset": "fashion-mnist",
        "per_class": per_class,
        "val_per_class": val_per_class,
        "test_per_class": test_per_class,
        "seed": seed,
    }
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        try:
            existing = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            existing = {}
        if existing.get("request") == request:
            return existing
        if existing.get("request", {}).get("dataset") != "fashion-mnist":
            raise ThawlineError(f"'{out}' holds something else; choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise ThawlineError(f"'{out}' exists and is not a thawline data folder; choose another --out")

    raw = find_raw_files(search_dirs)
    train_images, train_labels = (read_idx(p) for p in raw["train"])
    test_images, test_labels = (read_idx(p) for p in raw["test"])
    per_class_train = len(train_labels) // len(CLASSES)
    n_val = val_per_class if val_per_class is not None else max(1, per_class_train // 10)
    if n_val >= per_class_train:
        raise ThawlineError(f"--val-per-class {n_val} leaves no training images (each class has {per_class_train})")
    train_idx, val_idx = stratified_split(train_labels, n_val, per_class, seed)
    test_idx = _cap_per_class(test_labels, test_per_class, seed)

    with atomic_folder(out) as tmp:
        counts = {
            "train": _write_split(tmp / "train", train_images, train_labels, train_idx, "train"),
            "val": _write_split(tmp / "val", train_images, train_labels, val_idx, "train"),
            "test": _write_split(tmp / "test", test_images, test_labels, test_idx, "test"),
        }
        manifest = {
            "request": request,
            "source": {k: [str(p) for p in v] for k, v in raw.items()},
            "classes": list(CLASSES),
            "counts": {k: sum(v.values()) for k, v in counts.items()},
            "per_class": counts,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
