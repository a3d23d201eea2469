"""Memory that must not grow with the data: deterministic guards, no timings and no absolute RSS figures.

- The feature pass (eager fill, then an epoch's lazy reads) works in bounded chunks: the prefix never sees more
  than one fill batch, and the peak of traced numpy allocations (tracemalloc) and of live torch tensors (every
  tensor an op creates, counted until it is freed) is the same for 64 and 512 images.
- The kept free heap is given back between passes (`runtime.release_freed_memory`), and a run releases it after its
  feature pass and before its final full-image evaluation, so peak RSS is the largest pass, not their union.
- `MemoryMeter` counts a peak that falls between two of its samples (the kernel's VmHWM).
`benchmarks/memory.py` measures the real figures (Lite0, 224 px) in subprocesses.
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_image_folder, tiny_config
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from thawline.models.stages import split_at
from thawline.training import engine, runtime, sources, trainer
from thawline.training.prepare import RunSetup, prepare_data, setup_run
from thawline.training.strategies import get_strategy

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim, /proc (Linux only)")

BATCH = 8  # tiny_config's batch size: the eager fill computes 2 * BATCH images per prefix call


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created by torch ops while the mode is on (op outputs, until freed)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for ptr, (ref, n) in list(self.live.items()):
            if ref.expired():
                del self.live[ptr]
                self.now -= n
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr and ptr not in self.live:
                    self.live[ptr] = (StorageWeakRef(storage), storage.nbytes())
                    self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        return out


def _feature_pass_peaks(tmp_path: Path, per_class: int) -> dict[str, int]:
    """Peaks of the partial strategy's feature pass over `3 * per_class` train images: the eager fill of every
    image in both views (as for val, or every rank under DDP), then one epoch's batches read lazily from a fresh
    cache (the first epoch's path), with the largest number of images the prefix got in one call."""
    data = make_image_folder(tmp_path / f"d{per_class}", {"train": per_class, "val": 2}, size=16)
    config = tiny_config(data, strategy="partial", cache_dir=str(tmp_path / f"cache{per_class}"), batch_size=BATCH)
    prepared = prepare_data(config, quiet=True)
    setup = setup_run(config, get_strategy("partial"), prepared)
    phase = setup.phases[0]
    split = split_at(setup.model, setup.smap, min(phase.trainable))
    assert split is not None
    biggest = 0
    sizes: set[int] = set()
    prefix = split.prefix

    def counted(x: torch.Tensor) -> torch.Tensor:
        nonlocal biggest
        biggest = max(biggest, x.shape[0])
        sizes.add(x.shape[0])
        return prefix(x)

    split.prefix = counted
    train = prepared.splits["train"]
    assert len(train) == 3 * per_class
    peaks = {}
    tracemalloc.start()
    try:
        with LiveTensorBytes() as eager:
            store = sources.features(setup, split, train, (0, 1), "t", quiet=True, eager=True)
        store.close()
        _, peaks["numpy_eager"] = tracemalloc.get_traced_memory()
        # The first epoch: features computed on first read, batch by batch (a fresh cache under another name).
        setup.config.cache_dir = str(tmp_path / f"lazy{per_class}")
        setup.cache_dir = Path(setup.config.cache_dir)
        store = sources.features(setup, split, train, (0, 1), "t", quiet=True, eager=False)
        tracemalloc.reset_peak()
        with LiveTensorBytes() as lazy:
            # no flips here; with them a batch draws pairs some of which are filled, and the call is padded
            batches = sources.Batches(store.read, train.labels, np.arange(len(train)), BATCH, shuffle=True,
                                      hflip=False, seed=0, has_views=True)  # fmt: skip
            for x, _ in batches:
                assert x.shape[0] <= BATCH
        _, peaks["numpy_lazy"] = tracemalloc.get_traced_memory()
        store.close()
    finally:
        tracemalloc.stop()
    assert sizes == {BATCH}  # short calls are padded to it (feature_cache.FeatureCache)
    peaks.update(torch_eager=eager.peak, torch_lazy=lazy.peak, biggest_call=biggest)
    peaks["row_bytes"] = min(train.cache.store.row_bytes, store.store._row_bytes)  # an image row, a feature row
    return peaks


def test_feature_pass_memory_does_not_grow_with_the_number_of_images(tmp_path: Path) -> None:
    _feature_pass_peaks(tmp_path, 4)  # warm-up: first-use allocations (imports, caches) are not the data's
    small = _feature_pass_peaks(tmp_path, 16)  # 48 images
    large = _feature_pass_peaks(tmp_path, 128)  # 384 images: 8x as many
    assert small["biggest_call"] == large["biggest_call"] == BATCH  # every prefix call: one training batch
    for key in ("torch_eager", "torch_lazy"):
        assert small[key] > 0
        assert large[key] <= small[key] * 1.05, (key, small, large)  # live tensors: one batch, whatever N
    per_image = 256  # bytes of bookkeeping per image allowed (index arrays, the filled bitmap, the row-list hash)
    assert large["row_bytes"] >= 4 * per_image  # so holding every image's (or feature's) row would fail below
    for key in ("numpy_eager", "numpy_lazy"):
        # numpy/Python side: one batch of image rows and features, plus bookkeeping of ~100 bytes per image
        assert large[key] <= small[key] + per_image * (384 - 48), (key, small, large)


def test_inference_calls_on_a_cpu_hold_at_most_32_images_of_224_px_unless_a_training_batch_is_bigger() -> None:
    def size(batch: int, px: int, device: str = "cpu") -> int:
        setup = SimpleNamespace(config=SimpleNamespace(batch_size=batch), device=torch.device(device),
                                data=SimpleNamespace(img_size=px))  # fmt: skip
        return RunSetup.eval_batch_size.fget(setup)

    assert size(32, 224) == 32  # not 64: the same speed, half the heap
    assert size(64, 224) == 64  # never below the training batch (its step holds more than an inference call)
    assert size(8, 224) == 16 and size(32, 112) == 64 and size(32, 448) == 32  # twice the batch when small
    assert size(32, 224, "cuda") == 64  # GPUs keep twice the batch


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


@linux
def test_release_gives_the_kept_free_heap_back_and_the_meter_counts_a_peak_between_samples(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not runtime.keep_freed_memory():  # process-wide, as every run in this process sets it anyway
        pytest.skip("the allocator setting is off (THAWLINE_MALLOC=default, or not glibc)")
    runtime.release_freed_memory()  # free pages kept by earlier tests: the allocation below faults in fresh pages
    meter = runtime.MemoryMeter(torch.device("cpu"))
    base = _rss_mb()
    big = torch.ones(64 * 2**20)  # 256 MB, touched
    small = torch.ones(1000)  # allocated after it: the big block's pages sit inside the heap, not at its top
    del big
    assert _rss_mb() - base > 200  # kept for reuse: freed, still resident
    assert runtime.release_freed_memory()
    assert _rss_mb() - base < 50  # given back, also from inside the heap
    if meter.kernel_peak:  # the kernel's peak could be reset (/proc/self/clear_refs): the peak between samples counts
        assert meter.peak_rss_mb - base > 200
    del small
    monkeypatch.setattr(runtime, "_configured", False)
    assert runtime.release_freed_memory() is False  # THAWLINE_MALLOC=default: glibc unmaps large blocks itself


def test_a_run_releases_kept_memory_after_the_feature_pass_and_before_the_final_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 6, "val": 3}, size=16)
    config = tiny_config(data, strategy="partial", epochs=1, out=str(tmp_path / "run"))
    events: list[str] = []
    release, evaluate, fill_all = runtime.release_freed_memory, engine.evaluate, sources.FeatureCache.fill_all

    def on_release() -> bool:
        events.append("release")
        return release()

    def on_evaluate(*args, **kwargs):
        events.append("evaluate")
        return evaluate(*args, **kwargs)

    def on_fill_all(self, *args, **kwargs):
        events.append("fill")
        return fill_all(self, *args, **kwargs)

    monkeypatch.setattr(runtime, "release_freed_memory", on_release)
    monkeypatch.setattr(engine, "evaluate", on_evaluate)
    monkeypatch.setattr(sources.FeatureCache, "fill_all", on_fill_all)
    result = trainer.train(config, quiet=True)
    assert result.summary is not None and result.summary["peak_rss_mb"] > 0
    # val features (eager), release; the epoch (lazy features), its val evaluation on features; release; the
    # final full-image evaluation; release at the end of the run.
    assert events[:2] == ["fill", "release"]
    last_eval = len(events) - 1 - events[::-1].index("evaluate")
    assert events[last_eval - 1] == "release" and events[-1] == "release"
