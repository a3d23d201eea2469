"""One training run: strategies as data, data and model preparation, batch sources, the loop, the run's steps,
the LR range test, checkpoints, the run folder, tracking, process settings and DDP.

The public API for scripts (benchmarks/), loaded when first used:
- strategies: `get_strategy` (a built-in or a strategies file's), `resolve` (its phases on a model's stages and an
  epoch budget: what each phase trains);
- a model's input settings as a run uses them: `data_settings` (image size, interpolation, mean, std);
- the process setting every run turns on: `keep_freed_memory` (the allocator keeps freed memory).
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "get_strategy": "thawline.training.strategies",
    "resolve": "thawline.training.strategies",
    "data_settings": "thawline.training.prepare",
    "keep_freed_memory": "thawline.training.runtime",
}


def __getattr__(name: str) -> Any:  # every thawline.training.x import runs this file first: nothing loads here
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thawline.training' has no attribute '{name}'")


__all__ = ["data_settings", "get_strategy", "keep_freed_memory", "resolve"]
