"""Models: stage maps and freezing, pretrained weights, the closed-form head fit, head2toe's multi-depth head,
depthwise convolutions.

The public API for scripts (benchmarks/), loaded when first used (torch, timm):
- the model thawline trains, with the same weights: `build_model`, `build_model_with_info` (also where the weights
  came from);
- its stages, the unit a strategy freezes and thaws: `stage_map`.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "build_model": "thawline.models.weights",
    "build_model_with_info": "thawline.models.weights",
    "stage_map": "thawline.models.stages",
}


def __getattr__(name: str) -> Any:  # every thawline.models.x import runs this file first: nothing loads here
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thawline.models' has no attribute '{name}'")


__all__ = ["build_model", "build_model_with_info", "stage_map"]
