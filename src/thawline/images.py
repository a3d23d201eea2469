"""Safe image decoding: any file a user's folder may hold becomes RGB uint8, or a BadImage naming why not.

Handles EXIF orientation, grayscale/palette/CMYK/LA/RGBA (composited on white, as a viewer shows it),
16-bit and float images (scaled, not clipped), truncated and zero-byte files, non-images with an image
extension, and decompression bombs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
# 89 MP, PIL's own default: above it a file is treated as a decompression bomb and skipped.
MAX_PIXELS = 89_478_485

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class BadImage(Exception):
    """A file that cannot be used as an image; `reason` is short and says what is wrong."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        elif hi <= lo:
            hi = lo + 1.0
        scaled = np.clip((np.nan_to_num(arr, nan=lo) - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def open_rgb(path: str | Path) -> Image.Image:
    """Open `path` as an upright RGB image or raise BadImage."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BadImage(path, f"cannot read ({e.strerror})") from None
    if size == 0:
        raise BadImage(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImage(path, f"{img.width}x{img.height} pixels exceeds the {MAX_PIXELS} limit")
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return _to_rgb(img).copy()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(path, "decompression bomb (too many pixels)") from None
    except UnidentifiedImageError:
        raise BadImage(path, "not an image PIL can read (wrong extension, SVG or text?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadImage(path, f"corrupt or truncated ({reason})") from None


def resize_rgb(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize to size x size (the seeds' Resize((224, 224)): whole image, no crop)."""
    try:
        resample = INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(f"unknown interpolation '{interpolation}'; use one of {sorted(INTERPOLATIONS)}") from None
    if img.size == (size, size):
        return img
    return img.resize((size, size), resample, reducing_gap=3.0 if max(img.size) > 4 * size else None)


def decode_resized(path: str | Path, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Decode `path` to a (size, size, 3) uint8 array or raise BadImage."""
    img = resize_rgb(open_rgb(path), size, interpolation)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, 3)
