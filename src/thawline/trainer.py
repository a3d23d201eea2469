"""One run from config to run folder: data, model, phases, the epoch loop, checkpoints, summary.

`train(config)` is the Python API behind `thawline train`; `compare` calls it once per strategy with the
same prepared data so images are decoded once for the whole comparison.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch import nn
from tqdm import tqdm

from thawline import distributed, engine, runtime
from thawline.cache import (
    FeatureCache,
    ImageCache,
    build_image_cache,
    default_cache_dir,
    state_fingerprint,
)
from thawline.checkpoint import load_checkpoint, save_checkpoint
from thawline.config import TrainConfig, atomic_write_text, save_yaml
from thawline.data import Batches, Discovered, Normalize, discover
from thawline.depthwise import use_fast_depthwise
from thawline.errors import ThawlineError
from thawline.models import (
    Split,
    StageMap,
    apply_freezing,
    count_params,
    eval_mode,
    is_suffix,
    split_at,
    stage_map,
)
from thawline.strategies import ResolvedPhase, Strategy, get_strategy, resolve
from thawline.tracking import SCALARS, Tracker, wandb_module
from thawline.weights import build_model_with_info


@dataclass
class SplitData:
    """One split after decoding: cached rows, labels and the paths of the images that decoded."""

    name: str
    cache: ImageCache
    paths: list[str]
    labels: np.ndarray
    rows: np.ndarray  # row indices into cache.store of the images that decoded

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class PreparedData:
    discovered: Discovered
    img_size: int
    interpolation: str
    splits: dict[str, SplitData]
    skipped: list[tuple[str, str]]

    @property
    def classes(self) -> list[str]:
        return self.discovered.classes


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_val_acc(self) -> float:
        return float(self.summary["best_val_acc"])

    @property
    def test_acc(self) -> float | None:
        return self.summary.get("test_acc")


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, flush=True)


def warn(message: str) -> None:
    """Problems with the user's input: on stderr even with --quiet (which only silences progress lines)."""
    if distributed.is_main():
        print(f"warning: {message}", file=sys.stderr, flush=True)


def pick_device(config: TrainConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ThawlineError("--device cuda: no CUDA GPU is visible; use --device cpu (or auto)")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    if kind == "cuda" and distributed.active():
        return torch.device("cuda", distributed.local_rank())  # one GPU per torchrun process
    return torch.device(kind)


def prepare_data(config: TrainConfig, img_size: int, interpolation: str, quiet: bool = False) -> PreparedData:
    """Discover the folder and decode every image once at `img_size` (reused across runs via the cache key)."""
    if not config.data:
        raise ThawlineError("no data given; pass --data DIR (an ImageFolder tree with train/ and val/)")
    found = discover(config.data, config.max_per_class)
    for w in found.warnings:
        warn(w)
    from thawline.datacheck import check_leakage

    leak_warning = check_leakage(found, allow=config.allow_leakage)  # refuses leakage unless allowed
    if leak_warning:
        warn(leak_warning)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    splits: dict[str, SplitData] = {}
    skipped = [(s.path, s.reason) for s in found.skipped]
    for name, files in found.splits.items():
        bar = tqdm(
            total=len(files.paths),
            desc=f"decode {name}",
            unit="img",
            disable=quiet or not sys.stderr.isatty(),
            leave=False,
        )
        with distributed.local_main_first():  # one decode per node under DDP; the other ranks read the cache
            cache = build_image_cache(files.paths, img_size, interpolation, cache_dir, config.workers, bar.update)
        bar.close()
        rows = np.flatnonzero(cache.ok)
        skipped.extend(cache.bad)
        labels = np.asarray(files.labels, dtype=np.int64)
        if len(rows) == 0:
            raise ThawlineError(f"no image in {found.root / name} could be decoded; see the skipped files listed")
        splits[name] = SplitData(name, cache, [files.paths[i] for i in rows], labels[rows], rows)
    if skipped:
        warn(f"skipped {len(skipped)} file(s) that are not decodable images (listed in skipped.csv of the run)")
    return PreparedData(found, img_size, interpolation, splits, skipped)


def data_settings(model: nn.Module, config: TrainConfig) -> tuple[int, str, tuple, tuple]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = config.img_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    interpolation = cfg.get("interpolation", "bilinear") or "bilinear"
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return size, interpolation, mean, std


def next_run_dir(parent: Path, stem: str) -> Path:
    n = 1
    while (parent / f"{stem}-{n}").exists():
        n += 1
    return parent / f"{stem}-{n}"


class MemoryMeter:
    """Peak resident memory of this process during a run (sampled), and peak CUDA memory when used."""

    def __init__(self, device: torch.device) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def peak_rss_mb(self) -> float:
        self.sample()
        return self.peak / 2**20

    @property
    def peak_gpu_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None


def set_bn_momentum(model: nn.Module, momentum: float | None) -> None:
    if momentum is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def build_run_model(
    config: TrainConfig, weights: str, n_classes: int, device: torch.device, channels_last: bool
) -> tuple[nn.Module, dict[str, Any], StageMap]:
    """The model a run trains: seeded head init (independent of what ran before), BN momentum, device, layout."""
    seed_everything(config.seed)
    model, weights_info = build_model_with_info(config.model, weights, n_classes, config.drop_rate)
    set_bn_momentum(model, config.bn_momentum)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        use_fast_depthwise(model)  # oneDNN's depthwise weight gradient is slow on the last stages' small maps
    return model, weights_info, stage_map(model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    config: TrainConfig,
    *,
    data: PreparedData | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    quiet: bool = False,
    strategy: Strategy | None = None,
    on_epoch=None,
) -> RunResult:
    """Train one strategy and write its run folder (config.yaml, metrics.jsonl, best/last.pt, summary.json)."""
    started = time.perf_counter()
    runtime.keep_freed_memory()  # large activations reused instead of page-faulted every step (~1.8x on CPU)
    distributed.init(config.device)
    main = distributed.is_main()  # under torchrun only rank 0 writes files and prints
    quiet = quiet or not main
    across = distributed.active()
    strategy = strategy or get_strategy(config.strategy, config.strategies_file)
    if config.wandb:
        wandb_module()  # fail before any work when --wandb cannot be honoured
    device = pick_device(config)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    # channels_last: 1.7x faster lite0 training on this AVX2 CPU (9 -> 15 img/s at 224) and faster on CUDA
    channels_last = config.channels_last if config.channels_last is not None else True
    seed_everything(config.seed)
    if data is None:
        probe = build_model_with_info(config.model, "none", 2)[0]
        size, interp, _, _ = data_settings(probe, config)
        data = prepare_data(config, size, interp, quiet)
    classes = data.classes
    lr_found = None
    lr_auto = config.lr == "auto"
    if lr_auto:
        from thawline.lrfind import resolve_auto_lr

        resume_dir = (run_dir or config.out) if resume else None
        # Under DDP every rank runs the range test on its shard (its caches are shared); rank 0's pick is used.
        config, lr_found = resolve_auto_lr(config, data=data, strategy=strategy, resume_dir=resume_dir, quiet=quiet)
        config = distributed.broadcast_object(config)
    weights = "none" if strategy.init == "random" else config.weights
    model, weights_info, smap = build_run_model(config, weights, len(classes), device, channels_last)
    img_size, interpolation, mean, std = data_settings(model, config)
    phases = resolve(strategy, smap.n_stages, config.epochs)
    lr_scale = config.lr / phases[0].lr if config.lr else 1.0

    out = Path(distributed.broadcast_object(str(run_dir or config.out or next_run_dir(Path("runs"), strategy.name))))
    if main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe_file = out / ".write-test"
            probe_file.write_text("")
            probe_file.unlink()
        except OSError as e:
            raise ThawlineError(f"cannot write to run folder '{out}' ({e.strerror}); pass a writable --out") from None

    state = _resume_state(out, config, classes) if resume else None
    distributed.barrier()  # every rank has read last.pt before rank 0 writes anything new
    if main and state is None and (out / "metrics.jsonl").exists():
        # A fresh run in an old folder, or a resume killed before its first checkpoint: start a fresh log.
        (out / "metrics.jsonl").unlink()
    resolved_config = {
        **config.to_dict(),
        "strategy": strategy.name,
        "strategy_init": strategy.init,
        "phases": [p.to_dict() for p in phases],
        "stages": list(smap.names),
        "classes": classes,
        "img_size": img_size,
        "interpolation": interpolation,
        "mean": list(mean),
        "std": list(std),
        "weights_source": weights_info.get("source"),
        "weights_sha256": weights_info.get("sha256"),
        "device": str(device),
        "amp": amp,
        "channels_last": channels_last,
        "num_train": len(data.splits["train"]),
        "num_val": len(data.splits["val"]),
        "num_test": len(data.splits["test"]) if "test" in data.splits else 0,
    }
    if lr_auto:
        resolved_config["lr_auto"] = True
    if lr_found is not None and main:
        from thawline.lrfind import write_lr_find

        write_lr_find(out, lr_found)
    resolved_config["world_size"] = distributed.world_size()
    class_weights = None
    if config.class_weights == "auto":
        class_weights = _class_weights(data.splits["train"].labels, len(classes))
        resolved_config["class_weight_values"] = [round(float(w), 6) for w in class_weights]
    if main:  # config.yaml is written once, complete
        save_yaml(out / "config.yaml", resolved_config)
        _write_skipped(out, data.skipped)

    tracker = Tracker(out, f"{out.name}", resolved_config, config.wandb, enabled=main)
    try:
        meter = MemoryMeter(device)
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        normalize = Normalize(mean, std, channels_last)
        loss_fn = nn.CrossEntropyLoss(
            weight=class_weights.to(device) if class_weights is not None else None,
            label_smoothing=config.label_smoothing,
        )
        cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()

        optimizer: torch.optim.Optimizer | None = None
        best_acc, best_epoch, best_state = -1.0, -1, None
        metrics: list[dict[str, Any]] = []
        start_epoch = 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer = engine.rebuild_optimizer(model, smap, config, state["group_stages"])
            optimizer.load_state_dict(state["optimizer"])
            best_acc, best_epoch = state["best_val_acc"], state["best_epoch"]
            start_epoch = state["global_epoch"]
            metrics = _truncate_metrics(out / "metrics.jsonl", start_epoch)
            if (out / "best.pt").exists():
                best_state = load_checkpoint(out / "best.pt")["model"]
            log(f"[{strategy.name}] resuming after epoch {start_epoch}", quiet)

        trainable_per_phase: list[int] = []
        phase_test: dict[int, float] = {}
        global_epoch = 0
        for phase in phases:
            n_trainable = apply_freezing(model, smap, set(phase.trainable), phase.bn)
            trainable_per_phase.append(n_trainable)
            phase_end = global_epoch + phase.epochs
            if phase_end <= start_epoch:
                global_epoch = phase_end
                continue
            optimizer = engine.enter_phase(optimizer, model, smap, phase, config, lr_scale)
            source = _phase_source(model, smap, phase, config, data, normalize, device, cache_dir, quiet, strategy.name)
            train_forward = distributed.wrap(source.forward, model, device)  # DDP over this phase's trainables
            steps_per_epoch = len(source.train_batches(0))
            total_steps = steps_per_epoch * phase.epochs
            warmup = int(round(config.warmup_epochs * steps_per_epoch))
            for epoch_in_phase in range(phase.epochs):
                if global_epoch < start_epoch:
                    global_epoch += 1
                    continue
                torch.manual_seed(config.seed * 100_003 + global_epoch)  # dropout etc.: a pure function of the epoch
                step0 = epoch_in_phase * steps_per_epoch
                counter = {"step": step0}

                def set_lr(counter=counter, optimizer=optimizer, total_steps=total_steps, warmup=warmup) -> None:
                    factor = engine.lr_factor(counter["step"], total_steps, warmup, config.schedule)
                    engine.apply_lr(optimizer, factor)
                    counter["step"] += 1

                bar = tqdm(
                    total=source.n_train // distributed.world_size(),
                    desc=f"{strategy.name} p{phase.index + 1} e{global_epoch + 1}",
                    unit="img",
                    disable=quiet or not sys.stderr.isatty(),
                    leave=False,
                )

                def on_batch(n: int, loss: float, bar=bar) -> None:
                    bar.update(n)
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                    meter.sample()

                try:
                    stats = engine.train_one_epoch(
                        train_forward,
                        source.train_batches(global_epoch),
                        optimizer,
                        loss_fn,
                        set_lr,
                        device,
                        amp,
                        progress=on_batch,
                        dropout=source.dropout,
                        across_ranks=across,
                    )
                except engine.NonFiniteLoss as e:
                    raise ThawlineError(
                        f"loss became {e.value} in strategy '{strategy.name}' phase {phase.index + 1}; lower the "
                        f"learning rate (--lr) and rerun; {out / 'last.pt'} keeps the last good epoch"
                    ) from None
                finally:
                    bar.close()
                val = engine.evaluate(
                    source.eval_forward, source.val_batches(), device, amp, model=model, across_ranks=across
                )
                if epoch_in_phase + 1 < phase.epochs:
                    source.complete()  # the views the first epoch did not draw: the next epochs read only
                seconds = stats.seconds + source.take_setup_seconds()
                global_epoch += 1
                row = {
                    "strategy": strategy.name,
                    "phase": phase.index + 1,
                    "phase_train": phase.train,
                    "epoch": global_epoch,
                    "epoch_in_phase": epoch_in_phase + 1,
                    "train_loss": round(stats.loss, 6),
                    "train_acc": round(stats.acc, 6),
                    "val_loss": round(val.loss, 6),
                    "val_acc": round(val.acc, 6),
                    "lr": optimizer.param_groups[-1]["lr"] if optimizer.param_groups else 0.0,
                    "seconds": round(seconds, 3),
                    "images_per_s": round(stats.images / seconds, 2) if seconds > 0 else None,
                    "trainable_params": n_trainable,
                    "feature_cache": source.cached,
                    "rss_mb": round(meter.peak_rss_mb, 1),
                }
                source.flush()
                metrics.append(row)
                if main:
                    _append_jsonl(out / "metrics.jsonl", row)
                if on_epoch is not None:
                    on_epoch(row)
                tracker.scalars({k: row[k] for k in SCALARS}, global_epoch)
                log(_epoch_line(row, phase, len(phases), config.epochs or sum(p.epochs for p in phases)), quiet)
                if val.acc > best_acc:
                    best_acc, best_epoch = val.acc, global_epoch
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    if main:
                        save_checkpoint(
                            out / "best.pt",
                            _checkpoint(model, optimizer, resolved_config, global_epoch, best_acc, best_epoch, phase),
                        )
                if main:
                    save_checkpoint(
                        out / "last.pt",
                        _checkpoint(model, optimizer, resolved_config, global_epoch, best_acc, best_epoch, phase),
                    )
            source.close()
            if config.test_each_phase and "test" in data.splits:
                test_batches = _eval_batches(data.splits["test"], config.batch_size * 2, normalize)
                phase_test[phase.index] = engine.evaluate(
                    model, test_batches, device, amp, model=model, across_ranks=across
                ).acc

        # Test (or val) predictions of the best epoch's weights, on full images.
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        eval_split = "test" if "test" in data.splits else "val"
        split = data.splits[eval_split]
        batches = _eval_batches(split, config.batch_size * 2, normalize)
        result = engine.evaluate(model, batches, device, amp, model=model, across_ranks=across)
        if main:
            _write_predictions(out / "predictions.csv", split, result, classes, eval_split)
        wall = time.perf_counter() - started
        train_seconds = sum(r["seconds"] for r in metrics)
        train_images = sum(r["images_per_s"] * r["seconds"] for r in metrics if r["images_per_s"])
        summary = {
            "strategy": strategy.name,
            "model": config.model,
            "weights": weights_info.get("source"),
            "classes": classes,
            "best_val_acc": round(best_acc, 6),
            "best_epoch": best_epoch,
            "test_acc": round(result.acc, 6) if eval_split == "test" else None,
            "test_loss": round(result.loss, 6) if eval_split == "test" else None,
            "epochs": sum(p.epochs for p in phases),
            "phases": [p.to_dict() for p in phases],
            "trainable_params": trainable_per_phase,
            "phase_results": _phase_results(phases, metrics, phase_test),
            "total_params": count_params(model),
            "wall_time_s": round(wall, 2),
            "train_time_s": round(train_seconds, 2),
            "images_per_s": round(train_images / train_seconds, 2) if train_seconds > 0 else None,
            "peak_rss_mb": round(meter.peak_rss_mb, 1),
            "peak_gpu_mb": meter.peak_gpu_mb,
            "layer_drift": _layer_drift(model, initial, smap),
            "num_train": len(data.splits["train"]),
            "num_val": len(data.splits["val"]),
            "num_test": len(data.splits["test"]) if "test" in data.splits else 0,
            "skipped_files": len(data.skipped),
            "img_size": img_size,
            "device": str(device),
            "predictions_split": eval_split,
        }
        if main:
            atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
            if summary["test_acc"] is not None:
                tracker.scalars({"test_acc": summary["test_acc"]}, global_epoch)
            _log_prediction_grid(tracker, out, classes, global_epoch)
    finally:
        tracker.close()  # also when a pruned sweep trial or Ctrl-C stops the run
    return RunResult(out, summary, metrics)


# ---- where a phase's batches come from -----------------------------------------------------------------


class PhaseSource:
    """Train/val batches and forward functions for one phase: full images, or cached frozen-prefix features."""

    def __init__(
        self,
        forward,
        eval_forward,
        train_batches,
        val_batches,
        n_train: int,
        cached: bool,
        setup_seconds: float = 0.0,
        dropout: float = 0.0,
        stores: list[FeatureCache] | None = None,
    ) -> None:
        self.forward = forward
        self.eval_forward = eval_forward
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.n_train = n_train
        self.cached = cached
        self._setup = setup_seconds
        self.dropout = dropout
        self.stores = stores or []

    def take_setup_seconds(self) -> float:
        s, self._setup = self._setup, 0.0
        return s

    def complete(self) -> None:
        """Compute the train features not drawn yet (timed as setup), so the phase's later epochs only read."""
        t0 = time.perf_counter()
        for store in self.stores:
            if not store.complete:
                store.fill_all()
        self._setup += time.perf_counter() - t0

    def flush(self) -> None:
        """Mark the features computed so far as durable: called before each checkpoint, so a resumed run finds
        exactly the features the uninterrupted run had at that point (their values depend, in the last bits, on
        the batch they were computed in)."""
        for s in self.stores:
            s.flush()

    def close(self) -> None:
        for s in self.stores:
            s.close()


def _image_batches(
    split: SplitData,
    batch_size: int,
    normalize: Normalize,
    *,
    shuffle: bool,
    hflip: bool,
    seed: int,
    balanced: bool = False,
    positions: np.ndarray | None = None,
) -> Batches:
    store = split.cache.store
    # Batches index positions 0..N-1; translate to cache rows (files that failed to decode are absent).
    return Batches(
        lambda idx: store.read(split.rows[idx]),
        split.labels,
        np.arange(len(split)) if positions is None else positions,
        batch_size,
        shuffle=shuffle,
        hflip=hflip,
        seed=seed,
        transform=normalize,
        balanced=balanced,
        shard=(distributed.rank(), distributed.world_size()) if shuffle else (0, 1),
    )


def _eval_positions(n: int) -> np.ndarray:
    """This rank's contiguous share of an evaluation split (all of it in one process); gathered in rank order."""
    return np.array_split(np.arange(n), distributed.world_size())[distributed.rank()]


def _eval_batches(split: SplitData, batch_size: int, normalize: Normalize) -> Batches:
    positions = _eval_positions(len(split))
    return _image_batches(split, batch_size, normalize, shuffle=False, hflip=False, seed=0, positions=positions)


def _phase_source(
    model: nn.Module,
    smap: StageMap,
    phase: ResolvedPhase,
    config: TrainConfig,
    data: PreparedData,
    normalize: Normalize,
    device: torch.device,
    cache_dir: Path,
    quiet: bool,
    name: str,
) -> PhaseSource:
    train, val = data.splits["train"], data.splits["val"]
    bs = config.batch_size
    split = None
    if config.feature_cache and phase.bn in ("frozen", "eval") and is_suffix(phase.trainable, smap.head + 1):
        split = split_at(model, smap, min(phase.trainable))
    if split is None:
        return PhaseSource(
            model,
            model,
            lambda epoch: _image_batches(
                train,
                bs,
                normalize,
                shuffle=True,
                hflip=config.hflip,
                seed=config.seed * 1_000_003 + epoch,
                balanced=config.balanced_sampler,
            ),
            lambda: _eval_batches(val, bs * 2, normalize),
            len(train),
            cached=False,
        )
    t0 = time.perf_counter()
    # Train features are computed on first use (the first epoch runs the prefix once per image, for the view it
    # draws) and completed after it when more epochs follow (so those only read); a one-epoch phase, like the
    # seed two-phase head, never pays for the views it does not draw. Under DDP the node's first rank computes
    # them all up front and the other ranks read its file.
    eager = distributed.active()
    with distributed.local_main_first():
        views = 2 if config.hflip else 1
        train_store = _features(
            model, smap, split, train, views, normalize, device, config, cache_dir, quiet, name, eager=eager
        )
        val_store = _features(model, smap, split, val, 1, normalize, device, config, cache_dir, quiet, name)
    setup = time.perf_counter() - t0
    positions = np.arange(len(train))

    def layout(x: torch.Tensor) -> torch.Tensor:  # feature maps in the model's memory format (no conv reorders)
        return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 and normalize.channels_last else x

    return PhaseSource(
        split.suffix,
        split.suffix,
        lambda epoch: Batches(
            train_store.read,
            train.labels,
            positions,
            bs,
            shuffle=True,
            hflip=config.hflip,
            seed=config.seed * 1_000_003 + epoch,
            transform=layout,
            has_views=True,
            balanced=config.balanced_sampler,
            shard=(distributed.rank(), distributed.world_size()),
        ),
        lambda: Batches(
            val_store.read,
            val.labels,
            _eval_positions(len(val)),
            bs * 2,
            shuffle=False,
            hflip=False,
            seed=0,
            transform=layout,
            has_views=True,
        ),
        len(train),
        cached=True,
        setup_seconds=setup,
        dropout=split.dropout,
        stores=[train_store, val_store],
    )


def _features(
    model: nn.Module,
    smap: StageMap,
    split: Split,
    data: SplitData,
    views: int,
    normalize: Normalize,
    device: torch.device,
    config: TrainConfig,
    cache_dir: Path,
    quiet: bool,
    name: str,
    eager: bool = True,
) -> FeatureCache:
    """Frozen-prefix outputs for every image (and its mirror image when flips are on), cached on disk.

    `eager` computes them all now (with a progress bar); otherwise each is computed when first read."""
    prefix_names = {n for s in range(split.first_trainable) for n in smap.params[s]}
    state = {
        k: v
        for k, v in model.state_dict().items()
        if k.rsplit(".", 1)[0] in {n.rsplit(".", 1)[0] for n in prefix_names}
    }
    key = "_".join(
        [
            config.model.replace("/", "_"),
            f"s{split.first_trainable}",
            f"v{views}",
            data.cache.key,
            state_fingerprint(state),
            str(len(data)),
            str(hash(tuple(data.rows.tolist())) & 0xFFFFFFFF),
        ]
    )

    @torch.inference_mode()
    def compute(idx: np.ndarray, view: int) -> torch.Tensor:
        rows = torch.from_numpy(data.cache.store.read(data.rows[idx]))
        if view == 1:
            rows = rows.flip(2)
        # The prefix as at inference (no dropout, BatchNorm on running statistics), also when called mid-epoch.
        with eval_mode(model):
            return split.prefix(normalize(rows).to(device))

    store = FeatureCache(key, len(data), views, compute, config.batch_size * 2, cache_dir)
    if eager and not store.complete:
        bar = tqdm(
            total=len(data),
            desc=f"{name}: features {data.name}",
            unit="img",
            disable=quiet or not sys.stderr.isatty(),
            leave=False,
        )
        store.fill_all(lambda n: bar.update(n))
        bar.close()
    return store


# ---- run folder helpers ----------------------------------------------------------------------------------


def _checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict,
    global_epoch: int,
    best_acc: float,
    best_epoch: int,
    phase: ResolvedPhase,
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "group_stages": [g["stage"] for g in optimizer.param_groups],
        "global_epoch": global_epoch,
        "phase": phase.index,
        "best_val_acc": round(best_acc, 6),
        "best_epoch": best_epoch,
        "config": config,
        "torch_rng": torch.get_rng_state(),
    }


def _resume_state(out: Path, config: TrainConfig, classes: list[str]) -> dict[str, Any] | None:
    if not (out / "last.pt").exists():
        return None
    state = load_checkpoint(out / "last.pt")
    saved = state.get("config", {})
    if saved.get("model") != config.model or saved.get("classes") != classes:
        raise ThawlineError(
            f"'{out / 'last.pt'}' was trained with model {saved.get('model')} on {len(saved.get('classes', []))} "
            f"classes; resume with the same --model and data, or use a new --out"
        )
    return state


def _truncate_metrics(path: Path, done_epochs: int) -> list[dict[str, Any]]:
    """Keep the log lines of the epochs the checkpoint holds; a crash mid-epoch leaves no duplicate line."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if row.get("epoch", 0) <= done_epochs:
                rows.append(row)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _log_prediction_grid(tracker: Tracker, out: Path, classes: list[str], step: int) -> None:
    """prediction_grid.png in the run folder (the report reuses it) and as an image in TensorBoard / W&B."""
    from thawline.metrics import read_predictions
    from thawline.report import GRID_NAME, plot_prediction_grid

    grid = out / GRID_NAME
    shown, _ = plot_prediction_grid(read_predictions(out / "predictions.csv", classes), grid)
    if shown:
        tracker.image("prediction_grid", grid, step)


def _class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Loss weights n / (k * count): rare classes count more, and a balanced folder gets all ones."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "reason"])
    w.writerows(skipped)
    atomic_write_text(out / "skipped.csv", buf.getvalue())


def _write_predictions(
    path: Path, split: SplitData, result: engine.EvalResult, classes: list[str], split_name: str
) -> None:
    import csv
    import io

    probs = torch.softmax(result.logits, 1)
    conf, pred = probs.max(1)
    losses = torch.nn.functional.cross_entropy(result.logits, result.labels, reduction="none")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["split", "path", "label", "pred", "confidence", "loss", "correct"])
    for i, p in enumerate(split.paths):
        y, yhat = int(result.labels[i]), int(pred[i])
        w.writerow(
            [
                split_name,
                p,
                classes[y],
                classes[yhat],
                f"{float(conf[i]):.6f}",
                f"{float(losses[i]):.6f}",
                int(y == yhat),
            ]
        )
    atomic_write_text(path, buf.getvalue())


def _phase_results(
    phases: list[ResolvedPhase], metrics: list[dict[str, Any]], phase_test: dict[int, float]
) -> list[dict[str, Any]]:
    """Per phase: best and last val accuracy, and test accuracy at the phase's end when measured."""
    out = []
    for phase in phases:
        rows = [r for r in metrics if r["phase"] == phase.index + 1]
        out.append(
            {
                "phase": phase.index + 1,
                "train": phase.train,
                "epochs": phase.epochs,
                "best_val_acc": max((r["val_acc"] for r in rows), default=None),
                "last_val_acc": rows[-1]["val_acc"] if rows else None,
                "test_acc_at_end": round(phase_test[phase.index], 6) if phase.index in phase_test else None,
            }
        )
    return out


def _layer_drift(model: nn.Module, initial: dict[str, torch.Tensor], smap: StageMap) -> dict[str, float]:
    """Relative L2 change of each stage's weights from their values at the start of the run."""
    params = dict(model.named_parameters())
    drift = {}
    for name, names in zip(smap.names, smap.params, strict=True):
        num = sum(float((params[n].detach().cpu() - initial[n].cpu()).double().pow(2).sum()) for n in names)
        den = sum(float(initial[n].cpu().double().pow(2).sum()) for n in names)
        drift[name] = round((num / den) ** 0.5, 6) if den > 0 else 0.0
    return drift


def _epoch_line(row: dict[str, Any], phase: ResolvedPhase, n_phases: int, total_epochs: int) -> str:
    cached = " cached" if row["feature_cache"] else ""
    ips = f"{row['images_per_s']:.0f}" if row["images_per_s"] else "-"
    return (
        f"[{row['strategy']}] phase {row['phase']}/{n_phases} ({phase.train}{cached}) "
        f"epoch {row['epoch']}/{total_epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}  lr {row['lr']:.2e}  "
        f"{row['seconds']:.1f}s  {ips} img/s"
    )
