"""Decoding large JPEGs for training: the full decode then resize (before) vs thawline's `decode_resized`
(a JPEG decoded at 1/2..1/8 scale, never below twice the target, then resized), back to back in one process.

    python benchmarks/decode.py                              # 48 photos of 12 MP at 224 px, 3 repeats
    python benchmarks/decode.py --megapixels 2 --size 224 64 --repeats 5

The photos are scikit-image's sample photographs (astronaut, cat, coffee, rocket) upscaled and saved as JPEG
quality 90, or smooth procedural images when scikit-image is not installed. Each repeat times both paths over all
files, alternating which goes first; the ratio is per repeat, and the spread over repeats is printed, with the
load average before and after (a ratio measured under load is not a result). The mean and largest absolute pixel
difference between the two paths are printed too: the price of the speed, in levels of 255.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from thawline.data import decode_resized, open_rgb, resize_rgb


def sources() -> list[np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        yy, xx = np.mgrid[0:480, 0:640]
        return [
            np.stack([(xx * k) % 256, (yy * (k + 1)) % 256, (xx + yy) % 256], -1).astype(np.uint8) for k in (1, 2, 3)
        ]
    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def make_photos(folder: Path, n: int, megapixels: float) -> list[Path]:
    w = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    h = int(w * 3 / 4)
    photos = sources()
    paths = []
    for i in range(n):
        size = (w, h) if i % 2 else (h, w)  # landscape and portrait
        path = folder / f"{i}.jpg"
        Image.fromarray(photos[i % len(photos)]).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def full_decode(path: Path, size: int, interpolation: str) -> np.ndarray:
    return np.asarray(resize_rgb(open_rgb(path), size, interpolation))


def timed(fn, paths: list[Path], size: int, interpolation: str) -> float:
    start = time.perf_counter()
    for p in paths:
        fn(p, size, interpolation)
    return (time.perf_counter() - start) / len(paths) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--size", type=int, nargs="+", default=[224])
    ap.add_argument("--interpolation", default="bicubic")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.n, args.megapixels)
        with Image.open(paths[1]) as img:
            print(f"{len(paths)} JPEGs of {img.width}x{img.height} (quality 90)")
        for size in args.size:
            ratios = []
            for rep in range(args.repeats):
                order = [("full", full_decode), ("thawline", decode_resized)]
                ms = dict(
                    (name, timed(fn, paths, size, args.interpolation)) for name, fn in order[:: 1 - 2 * (rep % 2)]
                )
                ratios.append(ms["full"] / ms["thawline"])
                print(f"  {size} px, repeat {rep + 1}: full {ms['full']:.1f} ms/image, thawline {ms['thawline']:.1f}")
            diffs = [
                np.abs(
                    full_decode(p, size, args.interpolation).astype(int) - decode_resized(p, size, args.interpolation)
                )
                for p in paths[:8]
            ]
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(
                f"{size} px: thawline decodes {statistics.median(ratios):.2f}x faster (median of {len(ratios)}, "
                f"spread {spread}); pixels differ by {np.mean([d.mean() for d in diffs]):.2f} on average, "
                f"{max(int(d.max()) for d in diffs)} at most (of 255)"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
