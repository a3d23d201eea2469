"""Image folders and their files: the walker, decoding, splits, discovery and batches, data checks, shifted copies,
the data fingerprint, Fashion-MNIST, and the decode-once image and feature caches.

The public API for scripts (benchmarks/), loaded when first used:
- an image as thawline decodes it (what the decode-once cache holds): `IMAGE_EXTENSIONS`, `open_rgb`, `resize_rgb`,
  `decode_resized`;
- the embedded Fashion-MNIST: `prepare_fashion_mnist` (an ImageFolder tree, as `thawline data prepare`),
  `find_raw_files`, `read_idx`, `FASHION_MNIST_CLASSES`.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "IMAGE_EXTENSIONS": ("thawline.data.images", "IMAGE_EXTENSIONS"),
    "decode_resized": ("thawline.data.images", "decode_resized"),
    "open_rgb": ("thawline.data.images", "open_rgb"),
    "resize_rgb": ("thawline.data.images", "resize_rgb"),
    "FASHION_MNIST_CLASSES": ("thawline.data.fashion_mnist", "CLASSES"),
    "find_raw_files": ("thawline.data.fashion_mnist", "find_raw_files"),
    "prepare_fashion_mnist": ("thawline.data.fashion_mnist", "prepare_fashion_mnist"),
    "read_idx": ("thawline.data.fashion_mnist", "read_idx"),
}


def __getattr__(name: str) -> Any:  # every thawline.data.x import runs this file first: nothing loads here
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'thawline.data' has no attribute '{name}'")


__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "decode_resized",
    "find_raw_files",
    "open_rgb",
    "prepare_fashion_mnist",
    "read_idx",
    "resize_rgb",
]
