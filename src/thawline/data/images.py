"""Safe image decoding: any file a user's folder may hold becomes RGB uint8, or a BadImage naming why not.

Handles EXIF orientation, grayscale/palette/CMYK/LA/RGBA (composited on white, as a viewer shows it),
16-bit and float images (scaled, not clipped), truncated and zero-byte files, non-images with an image
extension, and decompression bombs. A large JPEG is decoded at a reduced scale (libjpeg's DCT scaling) when
it will be shrunk anyway: a 12 MP photo resized to 224 px decodes ~6x faster, within a level of the full decode.
"""

from __future__ import annotations

import codecs
import contextlib
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

JPEG = {".jpg", ".jpeg", ".jpe", ".jfif"}
IMAGE_EXTENSIONS = frozenset({*JPEG, ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif", ".ppm", ".pgm", ".pbm"})
# 89 MP, PIL's own default: above it a file is treated as a decompression bomb and skipped.
MAX_PIXELS = 89_478_485
# A JPEG is decoded at a reduced scale only down to this multiple of the size it is resized to.
REDUCING_GAP = 2

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
    if mode.startswith("I") and mode not in ("I;16", "I;16B", "I;16L", "I"):
        img = img.convert("I")  # I;16S, I;32 and the like: integer samples, scaled below
        mode = "I"
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
            lo, hi = 0.0, 65535.0  # 16-bit samples (PNG, TIFF, PGM): full range, so 65535 is white
        elif hi <= lo:
            hi = lo + 1.0
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
        scaled = np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _not_an_image(path: Path) -> str:
    """Why PIL could not identify `path`, judged from its first bytes, with what to do about it."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        head = b""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG vector drawing, not a raster image; convert it to PNG (e.g. rsvg-convert) or remove it"
    if text.startswith((b"<!doctype html", b"<html")):
        return "HTML page, not an image (a saved web page?); download the image itself or remove it"
    if b"\0" not in head:
        try:  # incremental: a multi-byte character cut at byte 1024 is still text
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
            return "text file, not an image; remove it or give it a non-image extension"
        except UnicodeDecodeError:
            pass
    return "not an image format PIL can read; convert it to PNG or JPEG, or remove it"


def open_rgb(path: str | Path, at_least: int | None = None) -> Image.Image:
    """Open `path` as an upright RGB image or raise BadImage (its reason says what is wrong and what to do).

    `at_least`: the caller shrinks the image to this many pixels a side or fewer, so a JPEG may be decoded at
    1/2, 1/4 or 1/8 scale as long as both sides stay at least this long (Pillow's `draft`, as `thumbnail` uses).
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        fix = "a broken link: point it at the file or remove it" if path.is_symlink() else "check the path"
        raise BadImage(path, f"cannot read ({e.strerror}); {fix}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadImage(path, "not a regular file (a folder, pipe or device); remove it")
    if st.st_size == 0:
        raise BadImage(path, "empty file (0 bytes); copy it again or remove it")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit; MAX_PIXELS is checked below, before any pixel is decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImage(path, _bomb(f"{img.width}x{img.height} pixels"))
                if at_least is not None:
                    img.draft(None, (at_least, at_least))  # no-op for every format but JPEG
                img.load()
                with contextlib.suppress(Exception):  # malformed EXIF: keep the pixels as stored, not lose them
                    img = ImageOps.exif_transpose(img) or img
                return _to_rgb(img).copy()
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise BadImage(path, _bomb(f"{found.group(1)} pixels" if found else "too many pixels")) from None
    except UnidentifiedImageError:
        raise BadImage(path, _not_an_image(path)) from None
    except PermissionError:
        raise BadImage(path, "cannot read (permission denied); make it readable (chmod +r) or remove it") from None
    except MemoryError:
        raise BadImage(path, "too large to decode in the available memory; downscale it") from None
    except Exception as e:  # any other decoder failure is a bad file, never a crash of the run
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadImage(path, f"corrupt or truncated ({reason}); copy it again or remove it") from None


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows the image, after its EXIF orientation, from the header alone."""
    with contextlib.suppress(Exception):  # malformed EXIF: the size as stored, as open_rgb keeps the pixels
        if img.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):  # the four that turn it a quarter
            return img.height, img.width
    return img.size


def _bomb(what: str) -> str:
    return f"decompression bomb guard: {what} is over the {MAX_PIXELS}-pixel limit; downscale it"


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
    # Twice the target before the resampling filter, as PIL's thumbnail(reducing_gap=2): mean difference from
    # the full decode ~0.2 of a level (of 255), so the pixels a model sees barely move.
    img = resize_rgb(open_rgb(path, at_least=REDUCING_GAP * size), size, interpolation)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, 3)
