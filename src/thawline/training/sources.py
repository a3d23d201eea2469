"""Where a phase's batches come from: decoded images, or cached outputs of the frozen prefix.

`phase_source(setup, phase)` picks the cheapest exact source: when every trainable stage sits above a frozen
prefix that runs as at inference (BatchNorm frozen or on running statistics), the prefix's outputs are computed
once per image and view and the phase trains only the suffix on them; otherwise the whole model runs on images.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from thawline.core.config import TrainConfig
from thawline.data.batches import Batches, Normalize
from thawline.data.feature_cache import FeatureCache, SplitFeatures, state_fingerprint
from thawline.models.stages import Forward, Split, StageMap, eval_mode, is_suffix, split_at
from thawline.training import distributed, runtime
from thawline.training.prefetch import prefetch_default, prefetched
from thawline.training.prepare import RunSetup, SplitData
from thawline.training.strategies import ResolvedPhase


@dataclass
class PhaseSource:
    """Train/val batches and forward functions for one phase: full images, or cached frozen-prefix features."""

    forward: Forward
    eval_forward: Forward
    train_batches: Callable[[int, int], Batches]  # (epoch, pass) -> that pass's shuffled batches
    # None: the run has no val split (a refit on train and val pooled)
    val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None
    n_train: int
    cached: bool
    setup_seconds: float = 0.0  # feature computation not yet counted in an epoch's time
    dropout: float = 0.0  # the dropout the model applies before its classifier (suffix over pooled features)
    stores: list[SplitFeatures] = field(default_factory=list)
    # Every train image's classifier input (unflipped) and label at once: read from the cache, or one frozen pass
    train_features: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None
    # The device batches are prepared for one step ahead in a background thread (`prefetch.py`); None: on the
    # caller's thread (a feature cache filled lazily runs the model, which only the main thread may)
    prefetch_to: torch.device | None = None

    def epoch_batches(self, epoch: int, passes: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch: `passes` shuffled passes over the train set (1 unless data is small)."""
        if self.prefetch_to is not None:
            return prefetched(self._passes(epoch, passes), self.prefetch_to)
        return self._passes(epoch, passes)

    def _passes(self, epoch: int, passes: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for p in range(passes):
            yield from self.train_batches(epoch, p)

    def take_setup_seconds(self) -> float:
        s, self.setup_seconds = self.setup_seconds, 0.0
        return s

    def complete(self) -> None:
        """Compute the train features not drawn yet (timed as setup), so the phase's later epochs only read."""
        t0 = time.perf_counter()
        filled = False
        for store in self.stores:
            if not store.complete:
                store.fill_all()
                filled = True
        if filled:
            runtime.release_freed_memory()  # the prefix pass's activations: the epochs' working set is another
        self.setup_seconds += time.perf_counter() - t0

    def flush(self) -> None:
        """Mark the features computed so far as durable: called before each checkpoint, so a resumed run finds
        exactly the features the uninterrupted run had at that point (their values depend, in the last bits, on
        the batch they were computed in)."""
        for s in self.stores:
            s.flush()

    def close(self) -> None:
        for s in self.stores:
            s.close()


def image_batches(
    split: SplitData,
    batch_size: int,
    normalize: Normalize,
    *,
    shuffle: bool,
    hflip: bool,
    seed: int,
    balanced: bool = False,
    positions: np.ndarray | None = None,
    min_scale: float = 1.0,
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
        min_scale=min_scale,
    )


def eval_positions(n: int) -> np.ndarray:
    """This rank's contiguous share of an evaluation split (all of it in one process); gathered in rank order."""
    return np.array_split(np.arange(n), distributed.world_size())[distributed.rank()]


def eval_batches(split: SplitData, batch_size: int, normalize: Normalize) -> Batches:
    positions = eval_positions(len(split))
    return image_batches(split, batch_size, normalize, shuffle=False, hflip=False, seed=0, positions=positions)


def epoch_seed(seed: int, epoch: int, pass_index: int = 0) -> int:
    """The batch order and flips of an epoch's pass: a pure function of the run's seed, the global epoch and the
    pass within it (the first pass keeps the order of a one-pass epoch)."""
    return seed * 1_000_003 + epoch + pass_index * 7_919_000_003


def feature_split(config: TrainConfig, phase: ResolvedPhase, model: nn.Module, smap: StageMap) -> Split | None:
    """The frozen prefix and trainable suffix `phase` trains on cached features with, or None when it trains on
    images (a compare's plan asks this too, on a weightless model)."""
    # cached features hold one view of each image: random crops (min_scale < 1) need the prefix on every batch
    cacheable = config.feature_cache and config.min_scale >= 1
    if cacheable and phase.bn in ("frozen", "eval") and is_suffix(phase.trainable, smap.head + 1):
        return split_at(model, smap, min(phase.trainable))
    return None


def phase_source(setup: RunSetup, phase: ResolvedPhase, name: str, quiet: bool = False) -> PhaseSource:
    config, smap, model = setup.config, setup.smap, setup.model
    train, val = setup.data.splits["train"], setup.data.splits.get("val")
    bs = config.batch_size
    split = feature_split(config, phase, model, smap)
    if split is None:
        ahead = setup.device if prefetch_default(setup.device) else None

        def val_batches() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
            batches = eval_batches(val, setup.eval_batch_size, setup.normalize)
            return batches if ahead is None else prefetched(batches, ahead)

        return PhaseSource(
            model,
            model,
            lambda epoch, p=0: image_batches(
                train,
                bs,
                setup.normalize,
                shuffle=True,
                hflip=config.hflip,
                seed=epoch_seed(config.seed, epoch, p),
                balanced=config.balanced_sampler,
                min_scale=config.min_scale,
            ),
            val_batches if val is not None else None,
            len(train),
            cached=False,
            train_features=lambda: head_inputs(setup),
            prefetch_to=ahead,
        )
    return _cached_source(setup, split, train, val, name, quiet)


def _cached_source(
    setup: RunSetup, split: Split, train: SplitData, val: SplitData | None, name: str, quiet: bool
) -> PhaseSource:
    """A phase that trains only the suffix after `split`: on the frozen prefix's features, cached."""
    config, bs = setup.config, setup.config.batch_size
    t0 = time.perf_counter()
    # Train features are computed on first use (the first epoch runs the prefix once per image, for the view it
    # draws) and completed after it when more epochs follow (so those only read); a one-epoch phase, like the
    # seed two-phase head, never pays for the views it does not draw. Under DDP the node's first rank computes
    # them all up front and the other ranks read its file.
    with distributed.local_main_first():
        views = (0, 1) if config.hflip else (0,)
        train_store = features(setup, split, train, views, name, quiet, eager=distributed.active())
        val_store = features(setup, split, val, (0,), name, quiet) if val is not None else None
    channels_last = setup.normalize.channels_last

    def train_features() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(train_store.read(np.arange(len(train)), np.zeros(len(train), np.int64)))
        return x.to(setup.device), torch.from_numpy(train.labels).to(setup.device)

    def layout(x: torch.Tensor) -> torch.Tensor:  # feature maps in the model's memory format (no conv reorders)
        return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 and channels_last else x

    return PhaseSource(
        split.suffix,
        split.suffix,
        lambda epoch, p=0: Batches(
            train_store.read,
            train.labels,
            np.arange(len(train)),
            bs,
            shuffle=True,
            hflip=config.hflip,
            seed=epoch_seed(config.seed, epoch, p),
            transform=layout,
            has_views=True,
            balanced=config.balanced_sampler,
            shard=(distributed.rank(), distributed.world_size()),
        ),
        (lambda: Batches(
            val_store.read,
            val.labels,
            eval_positions(len(val)),
            setup.eval_batch_size,
            shuffle=False,
            hflip=False,
            seed=0,
            transform=layout,
            has_views=True,
        )) if val is not None and val_store is not None else None,
        len(train),
        cached=True,
        setup_seconds=time.perf_counter() - t0,
        dropout=split.dropout,
        stores=[s for s in (train_store, val_store) if s is not None],
        train_features=train_features,
    )


def head_inputs(setup: RunSetup) -> tuple[torch.Tensor, torch.Tensor]:
    """Every train image's (unflipped) input to the classifier and its label, by one pass of the frozen model: what
    the feature cache holds, for a phase that runs without it (`--no-feature-cache`), so the recipe is the same."""
    split = split_at(setup.model, setup.smap, setup.smap.head)
    if split is None:
        raise ValueError("this model's classifier input cannot be computed on its own")
    train = setup.data.splits["train"]
    batches = image_batches(train, setup.eval_batch_size, setup.normalize, shuffle=False, hflip=False, seed=0)
    out = []
    with eval_mode(setup.model), torch.inference_mode():
        for x, _ in batches:
            out.append(split.prefix(x.to(setup.device)).float())
    return torch.cat(out), torch.from_numpy(train.labels).to(setup.device)


def features(
    setup: RunSetup, split: Split, data: SplitData, views: tuple[int, ...], name: str, quiet: bool, eager: bool = True
) -> SplitFeatures:
    """Frozen-prefix outputs of the split's images in `views` (1: the mirror image), cached on disk.

    The cache file holds a row per image of the split's image cache, in both views when flips are on: the folds of
    `compare --folds` (subsets of one pooled image cache, each fold's val another fold's train) and the refit fill
    and read one file, each image computed once per view. `eager` computes the split's now (with a progress bar);
    otherwise each is computed when first read."""
    model, smap, config = setup.model, setup.smap, setup.config
    prefix_modules = {n.rsplit(".", 1)[0] for s in range(split.first_trainable) for n in smap.params[s]}
    state = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] in prefix_modules}
    stored_views = 2 if config.hflip else 1
    key = "_".join(
        [
            config.model.replace("/", "_"),
            f"s{split.first_trainable}",
            *([f"h-{setup.strategy.head}"] if setup.strategy.head != "linear" else []),  # another prefix output
            f"v{stored_views}",
            data.cache.key,  # the image cache: its rows are this file's rows
            state_fingerprint(state),
        ]
    )

    @torch.inference_mode()
    def compute(rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(data.cache.store.read(rows))
        flip = torch.from_numpy(np.asarray(views) == 1)
        if flip.any():
            images[flip] = images[flip].flip(2)  # view 1: the mirror image (NHWC: width is axis 2)
        # The prefix as at inference (no dropout, BatchNorm on running statistics), also when called mid-epoch.
        with eval_mode(model):
            return split.prefix(setup.normalize(images).to(setup.device))

    # Prefix calls of the training batch's size: a first epoch's lazy fill then computes whole calls, unpadded.
    store = FeatureCache(key, data.cache.store.shape[0], stored_views, compute, config.batch_size, setup.cache_dir)
    own = SplitFeatures(store, data.rows, views)
    if eager and not own.complete:
        bar = tqdm(
            total=len(data),
            initial=len(data) - own.missing() / len(views),
            desc=f"{name}: features {data.name}",
            unit="img",
            disable=quiet or not sys.stderr.isatty(),
            leave=False,
        )
        own.fill_all(lambda pairs: bar.update(pairs / len(views)))
        bar.close()
        runtime.release_freed_memory()  # the prefix pass's activations: what trains next has another working set
    return own


def passes_per_epoch(setup: RunSetup, phase: ResolvedPhase, steps_per_pass: int) -> int:
    """How many passes over the train set each epoch of `phase` makes.

    `min_steps` is a budget for the whole run: when all epochs of all phases give fewer steps, every epoch
    repeats passes (the same number in every phase, so strategies keep equal budgets). `head_steps` applies to a
    phase that trains only the head; on cached features (the usual case) such a step costs microseconds. The
    recipe never depends on whether the cache is used. Whole passes, the nearest number to the target (>= 1)."""
    head_only = tuple(phase.trainable) == (setup.smap.head,)
    return epoch_passes(setup.config, steps_per_pass, setup.total_epochs, phase.epochs, head_only)


def epoch_passes(
    config: TrainConfig, steps_per_pass: int, total_epochs: int, phase_epochs: int, head_only: bool
) -> int:
    """`passes_per_epoch` from counts alone: what a compare's plan (`compare --dry-run`) reads before any model is
    set up."""
    passes = max(1, round(config.min_steps / max(1, steps_per_pass * total_epochs)))
    if head_only:
        passes = max(passes, round(config.head_steps / max(1, steps_per_pass * phase_epochs)))
    return passes
