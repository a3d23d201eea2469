"""Shared fixtures: tiny generated image folders and an isolated cache folder for every test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from thawline.core.config import TrainConfig, make_config

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core (make test: pytest -n auto): each trains on one thread, and so do the processes it starts,
    # instead of every worker's OpenMP pool contending for every core.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

CLASSES = ("circle", "stripes", "square")
# Files whose tests start fresh processes (kill-and-resume at every kill point, two-rank DDP, a PostgreSQL server,
# a full disk) or train on the real weights: `make check` (-m "not heavy") leaves them to `make test`.
HEAVY_FILES = {"test_resume.py", "test_distributed.py", "test_atomic_writes.py", "test_fashion_mnist.py",
               "test_sweep.py", "test_memory.py"}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in HEAVY_FILES:
            item.add_marker(pytest.mark.heavy)


def _draw(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A class-specific pattern with random colour jitter and noise, so tiny models can learn it."""
    img = rng.integers(0, 60, (size, size, 3)).astype(np.int32)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.uniform(-3, 3, 2)
    if kind == "circle":
        mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size / 3.5) ** 2
    elif kind == "stripes":
        mask = (xx // 4) % 2 == 0
    else:
        mask = (abs(yy - c[0]) < size / 4) & (abs(xx - c[1]) < size / 4)
    img[mask] += rng.integers(150, 195, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path, per_class: dict[str, int] | None = None, classes=CLASSES, seed: int = 0, size: int = 32
) -> Path:
    per_class = per_class or {"train": 16, "val": 8, "test": 8}
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(_draw(cls, rng, size)).save(d / f"{cls}_{i}.png")
    return root


def tiny_config(data: Path, **overrides: Any) -> TrainConfig:
    """A fast run on the tiny timm test model: the options most tests share; `overrides` win."""
    options = {
        "data": str(data),
        "model": "test_efficientnet",
        "weights": "none",
        "img_size": 32,
        "epochs": 2,
        "batch_size": 8,
        "workers": 1,
        "lr": 3e-3,
        # one pass per epoch: the tiny folders would otherwise repeat passes to reach the minimum steps
        # (tested on their own in test_train.py)
        "min_steps": 0,
        "head_steps": 0,
    }
    return make_config({**options, **overrides})


def one_error_line(capsys: pytest.CaptureFixture, *fragments: str) -> str:
    """stderr holds exactly one line, thawline's error, and it names every fragment."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("thawline: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("THAWLINE_CACHE_DIR", str(cache))
    return cache


def interrupt_after_checkpoint(monkeypatch: pytest.MonkeyPatch, epoch: int = 1) -> None:
    """Ctrl-C right after global epoch `epoch`'s checkpoint is complete (last.pt written): a run stopped there.
    Hooks the trainer's own fault point, so it holds however the checkpoint files are written."""
    from thawline.core import faults

    real_after = faults.after

    def after(event: str, n: int) -> None:
        real_after(event, n)
        if event == "checkpoint" and n == epoch:
            monkeypatch.setattr(faults, "after", real_after)
            raise KeyboardInterrupt

    monkeypatch.setattr(faults, "after", after)
