"""Safe decoding: every odd file a user's folder may hold becomes an (S, S, 3) uint8 array or a BadImage with a reason.

The makers here build each kind of file with PIL/numpy; tests/test_bad_input.py puts them into a whole corpus.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import thawline.data.images
from thawline.data.images import BadImage, decode_resized, open_rgb

S = 16


def noise(seed: int = 0, w: int = 48, h: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height 8-bit gray pixels (the data itself is tiny)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------------------- usable odd images


def make_rgba(path: Path) -> None:
    a = np.zeros((8, 8, 4), np.uint8)
    a[:, :4] = (0, 0, 0, 0)  # fully transparent black -> white
    a[:, 4:] = (255, 0, 0, 255)  # opaque red stays red
    Image.fromarray(a, "RGBA").save(path)


def make_palette_transparent(path: Path) -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 6))  # 0: green (transparent), 1: red
    img.paste(1, (4, 0, 8, 8))
    img.save(path, transparency=0)


def make_cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK


def make_gray16_png(path: Path) -> None:
    a = np.zeros((8, 12), np.uint16)
    a[:, 4:8] = 32768
    a[:, 8:] = 65535
    Image.fromarray(a).save(path)


def make_gray16_pgm(path: Path) -> None:  # PIL reads 16-bit PGM as mode "I", not "I;16"
    a = np.full((8, 8), 65535, np.uint16)
    a[:, :4] = 0
    Image.fromarray(a).save(path)


def make_gray_l(path: Path) -> None:
    Image.new("L", (10, 6), 77).save(path)


def make_gray_la(path: Path) -> None:
    a = np.zeros((8, 8, 2), np.uint8)
    a[:, 4:] = (0, 255)  # opaque black; the left half is transparent -> white
    Image.fromarray(a, "LA").save(path)


def make_bilevel(path: Path) -> None:
    img = Image.new("1", (8, 8), 0)
    img.paste(1, (4, 0, 8, 8))
    img.save(path)


def make_exif_rotated(path: Path) -> None:
    """Stored 40 wide x 20 high with a red top-left corner; orientation 6 means 'rotate 90 degrees clockwise'."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:] = (0, 0, 255)
    a[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, exif=exif.tobytes(), quality=95)


def make_float_tiff(path: Path) -> None:
    Image.fromarray(np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), "F").save(path)


def make_animated_gif(path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def make_avif(path: Path) -> None:
    Image.fromarray(np.full((12, 10, 3), (30, 160, 90), np.uint8)).save(path, format="AVIF")


def make_jpe(path: Path) -> None:  # .jpe: an old extension for JPEG files
    Image.fromarray(np.full((12, 10, 3), (200, 40, 40), np.uint8)).save(path, format="JPEG")


# name -> (file name, maker): each decodes to an (S, S, 3) uint8 array
GOOD: dict[str, tuple[str, Callable[[Path], None]]] = {
    "rgba png": ("rgba.png", make_rgba),
    "palette png with transparency": ("palette.png", make_palette_transparent),
    "cmyk jpeg": ("cmyk.jpg", make_cmyk_jpeg),
    "16-bit grayscale png": ("gray16.png", make_gray16_png),
    "16-bit pgm": ("gray16.pgm", make_gray16_pgm),
    "grayscale L": ("gray.png", make_gray_l),
    "grayscale with alpha LA": ("gray_alpha.png", make_gray_la),
    "1-bit": ("bilevel.png", make_bilevel),
    "exif rotated jpeg": ("rotated.jpg", make_exif_rotated),
    "float tiff": ("float.tif", make_float_tiff),
    "animated gif": ("animated.gif", make_animated_gif),
    "avif": ("photo.avif", make_avif),
    "jpe": ("old.jpe", make_jpe),
}


# ------------------------------------------------------------------------------------------- unusable files


def make_truncated_png(path: Path) -> None:
    data = encoded(Image.fromarray(noise(1, 64, 64)), "PNG")
    path.write_bytes(data[: len(data) // 2])


def make_truncated_jpeg(path: Path) -> None:
    data = encoded(Image.fromarray(noise(2, 64, 64)), "JPEG")
    path.write_bytes(data[: len(data) // 2])


def make_zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def make_text(path: Path) -> None:
    path.write_text("label,notes\ncat,this is not an image\n")


def make_svg(path: Path) -> None:
    path.write_text(
        '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8">'
        '<rect width="8" height="8" fill="red"/></svg>\n'
    )


def make_html(path: Path) -> None:
    path.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")


def make_binary_junk(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)


def make_bomb(path: Path) -> None:
    path.write_bytes(png_with_size(100_000, 100_000))  # 10 gigapixels claimed by a 100-byte file


# name -> (file name, maker, fragment of the BadImage reason)
BAD: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "truncated png": ("truncated.png", make_truncated_png, "truncated"),
    "truncated jpeg": ("truncated.jpg", make_truncated_jpeg, "truncated"),
    "zero-byte file": ("empty.png", make_zero_bytes, "empty file (0 bytes)"),
    "text with .jpg extension": ("notes.jpg", make_text, "text file, not an image"),
    "svg with .png extension": ("drawing_svg.png", make_svg, "SVG vector drawing"),
    "real .svg file": ("drawing.svg", make_svg, "SVG vector drawing"),
    "html page with .jpg extension": ("page.jpg", make_html, "HTML page"),
    "binary junk with .png extension": ("junk.png", make_binary_junk, "not an image format"),
    "decompression bomb header": ("bomb.png", make_bomb, "decompression bomb"),
}


@pytest.mark.parametrize("kind", list(GOOD))
def test_odd_but_usable_images_decode_to_rgb_uint8(kind: str, tmp_path: Path) -> None:
    name, make = GOOD[kind]
    make(tmp_path / name)
    for interpolation in ("bilinear", "bicubic"):
        arr = decode_resized(tmp_path / name, S, interpolation)
        assert arr.shape == (S, S, 3) and arr.dtype == np.uint8


@pytest.mark.parametrize("kind", list(BAD))
def test_unusable_files_raise_bad_image_with_a_reason(kind: str, tmp_path: Path) -> None:
    name, make, fragment = BAD[kind]
    make(tmp_path / name)
    with pytest.raises(BadImage) as info:
        decode_resized(tmp_path / name, S)
    assert fragment in info.value.reason
    assert info.value.path == str(tmp_path / name)
    assert "\n" not in str(info.value)
    assert ";" in info.value.reason  # every reason says what to do after the semicolon


def rgb(path: Path) -> np.ndarray:
    return np.asarray(open_rgb(path))


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    make_rgba(tmp_path / "a.png")
    a = rgb(tmp_path / "a.png")
    assert a[0, 0].tolist() == [255, 255, 255]  # fully transparent black
    assert a[0, 7].tolist() == [255, 0, 0]
    make_palette_transparent(tmp_path / "p.png")
    p = rgb(tmp_path / "p.png")
    assert p[0, 0].tolist() == [255, 255, 255] and p[0, 7].tolist() == [255, 0, 0]
    make_gray_la(tmp_path / "la.png")
    la = rgb(tmp_path / "la.png")
    assert la[0, 0].tolist() == [255, 255, 255] and la[0, 7].tolist() == [0, 0, 0]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    make_gray16_png(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode.startswith("I")
    g = rgb(tmp_path / "g.png")
    assert g[0, 0].tolist() == [0, 0, 0]
    assert g[0, 5].tolist() == [128, 128, 128]
    assert g[0, 11].tolist() == [255, 255, 255]  # 65535 -> 255
    make_gray16_pgm(tmp_path / "g.pgm")
    pgm = rgb(tmp_path / "g.pgm")
    assert pgm[0, 0].tolist() == [0, 0, 0] and pgm[0, 7].tolist() == [255, 255, 255]


def test_gray_bilevel_cmyk_float_and_gif_values(tmp_path: Path) -> None:
    make_gray_l(tmp_path / "l.png")
    assert (rgb(tmp_path / "l.png") == 77).all()
    make_bilevel(tmp_path / "b.png")
    b = rgb(tmp_path / "b.png")
    assert b[0, 0].tolist() == [0, 0, 0] and b[0, 7].tolist() == [255, 255, 255]
    make_cmyk_jpeg(tmp_path / "c.jpg")
    r, g, bl = rgb(tmp_path / "c.jpg")[8, 8].tolist()
    assert r > 220 and g < 40 and bl < 40
    make_float_tiff(tmp_path / "f.tif")
    f = rgb(tmp_path / "f.tif")
    assert f[0, 0, 0] == 0 and f[7, 7, 0] == 255  # -1..1 stretched to 0..255
    make_animated_gif(tmp_path / "a.gif")
    assert rgb(tmp_path / "a.gif")[0, 0].tolist() == [255, 0, 0]  # the first frame


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    make_exif_rotated(path)
    assert Image.open(path).size == (40, 20)
    upright = open_rgb(path)
    assert upright.size == (20, 40)  # width and height swapped
    a = np.asarray(upright).astype(int)
    assert (abs(a[1, -2] - (255, 0, 0)) < 40).all()  # the stored top-left red corner is now top-right
    assert (abs(a[1, 1] - (0, 0, 255)) < 40).all()
    small = decode_resized(path, S, "nearest").astype(int)
    assert small[0, -1, 0] > 200 and small[0, 0, 2] > 200


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(noise(3, 64, 64)).save(path)
    assert decode_resized(path, S).shape == (S, S, 3)
    monkeypatch.setattr(thawline.data.images, "MAX_PIXELS", 1000)
    with pytest.raises(BadImage, match="64x64 pixels is over the 1000-pixel limit"):
        decode_resized(path, S)


def test_broken_link_and_pipe(tmp_path: Path) -> None:
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "missing.png")
    with pytest.raises(BadImage, match=r"cannot read \(No such file or directory\); a broken link"):
        decode_resized(link, S)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(BadImage, match="not a regular file"):  # opening it would block forever
        decode_resized(fifo, S)


def test_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading the file")
    path = tmp_path / "locked.png"
    Image.fromarray(noise()).save(path)
    path.chmod(0)
    try:
        with pytest.raises(BadImage, match="permission denied"):
            decode_resized(path, S)
    finally:
        path.chmod(0o644)


def test_permission_error_reason_without_dropping_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chmod 000 case above cannot run as root; the reason for a PermissionError is checked here instead."""
    path = tmp_path / "locked.png"
    Image.fromarray(noise()).save(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(thawline.data.images.Image, "open", denied)
    with pytest.raises(BadImage, match=r"permission denied\); make it readable"):
        decode_resized(path, S)


def test_large_jpeg_decodes_at_reduced_scale_close_to_full_decode(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:1500, 0:2000]
    smooth = np.stack([xx * 255 // 2000, yy * 255 // 1500, (xx + yy) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=92)
    Image.fromarray(smooth).save(tmp_path / "big.png")
    Image.fromarray(smooth[:200, :300]).save(tmp_path / "small.jpg", quality=92)

    assert open_rgb(tmp_path / "big.jpg").size == (2000, 1500)  # no target: every pixel
    # the smallest of 1/2, 1/4, 1/8 scale keeping both sides >= 448: 1/2 (1/4 would give 375 rows)
    assert open_rgb(tmp_path / "big.jpg", at_least=448).size == (1000, 750)
    assert open_rgb(tmp_path / "big.jpg", at_least=100).size == (250, 188)  # 1/8, the deepest libjpeg offers
    assert open_rgb(tmp_path / "big.png", at_least=100).size == (2000, 1500)  # only JPEG has a scaled decode
    assert open_rgb(tmp_path / "small.jpg", at_least=448).size == (300, 200)  # never below the target

    full = np.asarray(open_rgb(tmp_path / "big.jpg").resize((224, 224), Image.Resampling.BICUBIC)).astype(int)
    fast = decode_resized(tmp_path / "big.jpg", 224, "bicubic").astype(int)
    assert np.abs(full - fast).mean() < 1.0 and np.abs(full - fast).max() <= 8
