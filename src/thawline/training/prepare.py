"""What every command that trains needs before its first step, set up in one place.

`prepare_data(config)` discovers the folder and decodes each image once (train, compare, lr-find and sweep call
it; compare and sweep once for all their runs). `setup_run(config, strategy, data)` builds what one run trains
with: device, AMP, the seeded model and its stage map, the resolved phases, normalisation and the loss.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from thawline.core.config import TrainConfig
from thawline.core.errors import ThawlineError
from thawline.core.runformat import CONFIG, COUNT_KEYS, SUMMARY
from thawline.data import fingerprint
from thawline.data.batches import Normalize
from thawline.data.cache_store import default_cache_dir
from thawline.data.discovery import Discovered, discover
from thawline.data.files import SPLITS, Skipped
from thawline.data.fingerprint import Fingerprint
from thawline.data.folds import pooled
from thawline.data.image_cache import ImageCache, build_image_cache
from thawline.data.leakage import check_leakage
from thawline.models.depthwise import use_fast_depthwise
from thawline.models.multidepth import install_multidepth_head
from thawline.models.stages import StageMap, stage_map
from thawline.models.weights import build_model_with_info
from thawline.training import distributed
from thawline.training.strategies import ResolvedPhase, Strategy, resolve


def warn(message: str) -> None:
    """Problems with the user's input: on stderr even with --quiet (which only silences progress lines)."""
    if distributed.is_main():
        print(f"warning: {message}", file=sys.stderr, flush=True)


def warn_skipped(left_out: list[Skipped], undecodable: int, where: str) -> None:
    """One line for what was left out: files that are not images, whole folders, files that do not decode."""
    folders = sum(s.folder for s in left_out)
    parts = []
    if len(left_out) - folders:
        parts.append(f"{len(left_out) - folders} file(s) that are not images")
    if folders:
        parts.append(f"{folders} folder(s)")
    if undecodable:
        parts.append(f"{undecodable} file(s) that cannot be decoded")
    if parts:
        warn(f"left out {', '.join(parts)} (listed in {where})")


# ---- data ---------------------------------------------------------------------------------------------------


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
    # every file's split, path, class and content key (a run's data.csv): taken at discovery by prepare_data
    _fingerprint: Fingerprint | None = field(default=None, repr=False)
    fold: tuple[int, int] | None = None  # (i, K): fold i of a K-fold comparison, its val the fold's images

    @property
    def classes(self) -> list[str]:
        return self.discovered.classes

    @property
    def fingerprint(self) -> Fingerprint:
        """What a resume checks the data against (fingerprint.py); computed on first use when not given."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint.of_discovered(self.discovered)
        return self._fingerprint

    def counts(self) -> dict[str, Any]:
        """num_train / num_val / num_test and the shares held out of train (`held_out`: {"val": 0.2}, empty when
        every split has its folder), as config.yaml and summary.json record them."""
        counts: dict[str, Any] = {COUNT_KEYS[s]: len(self.splits[s]) if s in self.splits else 0 for s in SPLITS}
        fold = {SUMMARY.fold: self.fold[0] + 1, SUMMARY.folds: self.fold[1]} if self.fold else {}
        return {**counts, SUMMARY.held_out: dict(self.discovered.held_out), **fold}


def data_settings(model: nn.Module, config: TrainConfig) -> tuple[int, str, tuple, tuple]:
    """(image size, interpolation, mean, std): the config's size, else the model's pretrained input config."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = config.img_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    interpolation = cfg.get("interpolation", "bilinear") or "bilinear"
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return size, interpolation, mean, std


def input_settings(config: TrainConfig) -> tuple[int, str]:
    """Image size and interpolation of `config.model` without loading weights (a weightless probe model)."""
    probe = build_model_with_info(config.model, "none", 2)[0]
    size, interpolation, _, _ = data_settings(probe, config)
    return size, interpolation


def cache_dir(config: TrainConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else default_cache_dir()


NO_DATA = "no data given; pass --data DIR (an ImageFolder tree: train/ and val/, or class folders)"


def discover_folder(config: TrainConfig) -> Discovered:
    """The splits and files of `config.data` as the options select them (no warnings printed, nothing decoded)."""
    if not config.data:
        raise ThawlineError(NO_DATA)
    return discover(config.data, config.max_per_class, config.val_split, config.test_split)


def discover_data(config: TrainConfig) -> tuple[Discovered, int, str]:
    """The folder's splits and files (its warnings printed), and the input size and interpolation to decode at."""
    if not config.data:  # before the model is probed
        raise ThawlineError(NO_DATA)
    img_size, interpolation = input_settings(config)
    found = discover_folder(config)
    for w in found.warnings:
        warn(w)
    return found, img_size, interpolation


def prepare_data(config: TrainConfig, quiet: bool = False, *, pool: bool = False) -> PreparedData:
    """Discover the folder and decode every image once at the model's input size (reused across runs); `pool`:
    train and val pooled as train (`data.folds.pooled`), the folds of `compare --folds` cut from it."""
    found, img_size, interpolation = discover_data(config)
    if pool:
        found = pooled(found)
    data_print = fingerprint.of_discovered(found)  # the files as found, before decoding reads them at length

    splits: dict[str, SplitData] = {}
    skipped = [(s.path, s.reason) for s in found.skipped]
    for name, files in found.splits.items():
        splits[name], bad = decode_split(found, name, files.paths, files.labels, config, img_size, interpolation, quiet)
        skipped.extend(bad)
    check_classes_decoded(found, splits, skipped)
    # Only images that decode count as leaked: a stray text file named .jpg copied into two splits leaks nothing.
    leak_warning = check_leakage(found, allow=config.allow_leakage, only={p for s in splits.values() for p in s.paths})
    if leak_warning:
        warn(leak_warning)
    warn_skipped(found.skipped, len(skipped) - len(found.skipped), "skipped.csv of the run")
    if not quiet and distributed.rank() == 0:
        counts = ", ".join(f"{len(split)} {name}" for name, split in splits.items())
        held_out = found.held_out_line()
        counts = counts.replace(" train", " train and val pooled for the folds") if pool else counts
        print(f"data: {found.root}: {len(found.classes)} classes; {counts} images at {img_size} px"
              + (f"; {held_out}" if held_out else ""), flush=True)  # fmt: skip
    return PreparedData(found, img_size, interpolation, splits, skipped, data_print)


def decode_split(
    found: Discovered,
    name: str,
    paths: list[str],
    labels: list[int] | np.ndarray,
    config: TrainConfig,
    img_size: int,
    interpolation: str,
    quiet: bool,
) -> tuple[SplitData, list[tuple[str, str]]]:
    """`paths` of split `name` decoded into the image cache: the split of those that decode, and (path, why) of those
    that do not; refused when none does."""
    bar = tqdm(total=len(paths), desc=f"decode {name}", unit="img", disable=quiet or not sys.stderr.isatty(),
               leave=False)  # fmt: skip
    with distributed.local_main_first():  # one decode per node under DDP; the other ranks read the cache
        cache = build_image_cache(paths, img_size, interpolation, cache_dir(config), config.workers, bar.update)
    bar.close()
    rows = np.flatnonzero(cache.ok)
    if len(rows) == 0:
        path, why = cache.bad[0]
        raise ThawlineError(
            f"none of the {len(paths)} image file(s) of {name} in {found.split_dir(name)} could be decoded "
            f"(e.g. '{path}': {why}); "
            f"fix or replace them (`thawline data check {found.root}` lists them all)"
        )
    labels = np.asarray(labels, dtype=np.int64)
    return SplitData(name, cache, [paths[i] for i in rows], labels[rows], rows), list(cache.bad)


def check_classes_decoded(found: Discovered, splits: dict[str, SplitData], skipped: list[tuple[str, str]]) -> None:
    """A class whose training images all fail to decode cannot be learned: refused, naming the class and one file.
    A class that val or test lose so is a warning, as when their folder has no images at all."""
    for name, split in splits.items():
        decoded = set(np.unique(split.labels).tolist())
        listed = set(found.splits[name].labels)
        lost = [found.classes[c] for c in sorted(listed - decoded)]
        if not lost:
            continue
        if name == "train":
            folder = found.split_dir("train") / lost[0]
            example = next((f" (e.g. '{p}': {why})" for p, why in skipped if p.startswith(f"{folder}{os.sep}")), "")
            raise ThawlineError(
                f"class '{lost[0]}' has no image in {folder} that decodes{example}; fix the files or remove "
                f"the folder (`thawline data check {found.root}` lists them all)"
                + (f"; {len(lost) - 1} more class(es) likewise" if len(lost) > 1 else "")
            )
        warn(f"{name}/ has no image of class(es) {', '.join(lost[:5])} that decodes")


# ---- model, device and loss -----------------------------------------------------------------------------------


def pick_device(config: TrainConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ThawlineError("--device cuda: no CUDA GPU is visible; use --device cpu (or auto)")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    if kind == "cuda" and distributed.active():
        return torch.device("cuda", distributed.local_rank())  # one GPU per torchrun process
    return torch.device(kind)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_bn_momentum(model: nn.Module, momentum: float | None) -> None:
    if momentum is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def build_run_model(
    config: TrainConfig,
    weights: str,
    n_classes: int,
    device: torch.device,
    channels_last: bool,
    head: str = "linear",
    img_size: int = 224,
) -> tuple[nn.Module, dict[str, Any], StageMap]:
    """The model a run trains: seeded head init (independent of what ran before), BN momentum, device, layout;
    `head` "multi-depth" puts a head over every stage's pooled features in the classifier's place (head2toe)."""
    seed_everything(config.seed)
    model, weights_info = build_model_with_info(config.model, weights, n_classes, config.drop_rate)
    set_bn_momentum(model, config.bn_momentum)
    model.to(device)
    smap = stage_map(model)
    if head == "multi-depth":
        smap = install_multidepth_head(model, smap, img_size)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        use_fast_depthwise(model)  # oneDNN's depthwise weight gradient is slow on the last stages' small maps
    return model, weights_info, smap


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Loss weights n / (k * count): rare classes count more, and a balanced folder gets all ones."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class RunSetup:
    """Everything one run (or one LR range test) trains with, built once before the first step."""

    config: TrainConfig
    strategy: Strategy
    data: PreparedData
    device: torch.device
    amp: bool
    channels_last: bool
    model: nn.Module
    weights: str  # what was asked for: "none" for a random-init strategy, else config.weights
    weights_info: dict[str, Any]
    smap: StageMap
    phases: list[ResolvedPhase]
    mean: tuple
    std: tuple
    normalize: Normalize
    class_weights: torch.Tensor | None
    loss_fn: nn.Module
    cache_dir: Path

    @property
    def lr_scale(self) -> float:
        """`--lr X` sets the first phase's LR; every phase keeps the strategy's LR ratios."""
        return self.config.lr / self.phases[0].lr if self.config.lr else 1.0

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    @property
    def eval_batch_size(self) -> int:
        """Images per inference call (evaluation, the frozen-prefix feature pass): twice the training batch; on a
        CPU at most the training batch once that holds 32 images of 224 px. A bigger call costs heap, not time:
        Lite0 at 224 px evaluated 64 images per call grew RSS by 1.5-1.6 GB, 32 per call by 0.7-0.85 GB, at the same
        CPU time per image (33-35 ms on the 2-core machine)."""
        bs = self.config.batch_size
        if self.device.type != "cpu":
            return 2 * bs
        return min(2 * bs, max(bs, 32 * 224 * 224 // self.data.img_size**2))

    def resolved_config(self, lr_auto: bool) -> dict[str, Any]:
        """config.yaml: every option, and what the run derived from them (phases, stages, classes, input settings)."""
        data, strategy = self.data, self.strategy
        resolved = {
            **self.config.to_dict(),
            CONFIG.strategy: strategy.name,
            CONFIG.strategy_init: strategy.init,
            **({CONFIG.strategy_head: strategy.head} if strategy.head != "linear" else {}),  # inference builds it again
            CONFIG.phases: [p.to_dict() for p in self.phases],
            CONFIG.stages: list(self.smap.names),
            CONFIG.classes: data.classes,
            CONFIG.img_size: data.img_size,
            CONFIG.interpolation: data.interpolation,
            CONFIG.mean: list(self.mean),
            CONFIG.std: list(self.std),
            CONFIG.weights_source: self.weights_info.get("source"),
            CONFIG.weights_sha256: self.weights_info.get("sha256"),
            CONFIG.device: str(self.device),
            CONFIG.amp: self.amp,
            CONFIG.channels_last: self.channels_last,
            **data.counts(),
        }
        if lr_auto:
            resolved[CONFIG.lr_auto] = True
        resolved[CONFIG.world_size] = distributed.world_size()
        if self.class_weights is not None:
            resolved[CONFIG.class_weight_values] = [round(float(w), 6) for w in self.class_weights]
        return resolved


def setup_run(config: TrainConfig, strategy: Strategy, data: PreparedData) -> RunSetup:
    device = pick_device(config)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    # channels_last: 1.7x faster lite0 training on this AVX2 CPU (9 -> 15 img/s at 224) and faster on CUDA
    channels_last = config.channels_last if config.channels_last is not None else True
    weights = "none" if strategy.init == "random" else config.weights
    model, weights_info, smap = build_run_model(
        config, weights, len(data.classes), device, channels_last, strategy.head, data.img_size
    )
    _, _, mean, std = data_settings(model, config)
    # The same loss for training and the LR range test (class weights included).
    weight = class_weights(data.splits["train"].labels, len(data.classes)) if config.class_weights == "auto" else None
    loss_fn = nn.CrossEntropyLoss(
        weight=weight.to(device) if weight is not None else None, label_smoothing=config.label_smoothing
    )
    return RunSetup(
        config=config,
        strategy=strategy,
        data=data,
        device=device,
        amp=amp,
        channels_last=channels_last,
        model=model,
        weights=weights,
        weights_info=weights_info,
        smap=smap,
        phases=resolve(strategy, smap.n_stages, config.epochs),
        mean=mean,
        std=std,
        normalize=Normalize(mean, std, channels_last, device),
        class_weights=weight,
        loss_fn=loss_fn,
        cache_dir=cache_dir(config),
    )
