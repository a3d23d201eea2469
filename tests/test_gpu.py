"""What only a CUDA GPU can check: AMP, channels_last, the feature cache and a two-phase run on the GPU.

Skipped without one (CI has none); `make gpu-check` runs them on a GPU machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

import thawline
from thawline.core.config import replace
from thawline.training import engine
from thawline.training.prepare import prepare_data, setup_run
from thawline.training.strategies import get_strategy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_cuda_run_defaults_to_bf16_autocast_and_channels_last(image_folder: Path) -> None:
    cfg = tiny_config(image_folder, strategy="full", device="auto", model="test_resnet")
    setup = setup_run(cfg, get_strategy("full"), prepare_data(cfg, quiet=True))
    assert setup.device.type == "cuda" and setup.amp
    conv = next(m for m in setup.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_cuda and conv.weight.dtype == torch.float32  # autocast, not a half model
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with engine.autocast(setup.device, True):
        logits = setup.model(x)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_two_phase_run_on_the_gpu(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = thawline.train(tiny_config(image_folder, strategy="two-phase", device="cuda"), run_dir=out, quiet=True)
    summary = result.summary
    assert summary["device"].startswith("cuda")
    assert summary["peak_gpu_mb"] is not None and summary["peak_gpu_mb"] > 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["phase"] for r in rows] == [1, 2]
    assert all(r["train_loss"] == r["train_loss"] and r["train_loss"] < 10 for r in rows)  # finite
    # a GPU checkpoint loads on a CPU-only machine
    state = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["model"].values())


def test_feature_cache_on_the_gpu_matches_the_uncached_path(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, strategy="partial", device="cuda", hflip=False, amp=False)
    cached = thawline.train(cfg, run_dir=tmp_path / "cached", quiet=True)
    plain = thawline.train(replace(cfg, feature_cache=False), run_dir=tmp_path / "plain", quiet=True)
    rows_c, rows_p = read_jsonl(tmp_path / "cached/metrics.jsonl"), read_jsonl(tmp_path / "plain/metrics.jsonl")
    assert all(r["feature_cache"] for r in rows_c) and not any(r["feature_cache"] for r in rows_p)
    for a, b in zip(rows_c, rows_p, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=2e-3)
    assert cached.summary["test_acc"] == pytest.approx(plain.summary["test_acc"], abs=0.05)


def test_gpu_and_cpu_runs_agree(image_folder: Path, tmp_path: Path) -> None:
    # fp32 on both: the same recipe learns the same thing on either device (not bit-equal: other kernels)
    cfg = tiny_config(image_folder, strategy="head-only", hflip=False, amp=False)
    gpu = thawline.train(replace(cfg, device="cuda"), run_dir=tmp_path / "gpu", quiet=True)
    cpu = thawline.train(replace(cfg, device="cpu"), run_dir=tmp_path / "cpu", quiet=True)
    loss_g = [r["train_loss"] for r in read_jsonl(tmp_path / "gpu/metrics.jsonl")]
    loss_c = [r["train_loss"] for r in read_jsonl(tmp_path / "cpu/metrics.jsonl")]
    assert loss_g == pytest.approx(loss_c, abs=1e-3)
    assert gpu.summary["best_val_acc"] == pytest.approx(cpu.summary["best_val_acc"], abs=0.05)


def test_prefetched_gpu_batches_are_the_same_batches(image_folder: Path) -> None:
    # The prefetch thread (on by default on CUDA) reads, flips, crops and normalises on its own thread, queuing its
    # kernels between the step's: the batches must be the same tensors in the same order. (Two whole CUDA runs are
    # not compared: cuDNN's backward may differ in the last bits from run to run with or without the thread.)
    from thawline.training.sources import phase_source

    cfg = tiny_config(image_folder, strategy="full", device="cuda", model="test_resnet", min_scale=0.5)
    setup = setup_run(cfg, get_strategy("full"), prepare_data(cfg, quiet=True))
    source = phase_source(setup, setup.phases[0], "full", quiet=True)
    assert source.prefetch_to is not None and source.prefetch_to.type == "cuda"
    ahead = list(source.epoch_batches(3, 2))
    source.prefetch_to = None
    plain = [(x.cuda(), y.cuda()) for x, y in source.epoch_batches(3, 2)]
    assert len(ahead) == len(plain) > 1
    for (xa, ya), (xp, yp) in zip(ahead, plain, strict=True):
        assert xa.is_cuda and ya.is_cuda
        assert torch.equal(xa, xp) and torch.equal(ya, yp)
        assert xa.is_contiguous(memory_format=torch.channels_last) or not setup.normalize.channels_last
    val = list(source.val_batches())
    assert all(x.is_cuda for x, _ in val)
