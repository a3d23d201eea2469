"""What a comparison will train, counted before it trains (`compare --dry-run`, and the progress line's estimate).

The plan comes from the same parts a compare runs: its checked options (trials, seeds, folds, models), the
strategies resolved against each model's stages (a weightless model: no weights read), the file listing (image
counts; nothing decoded), the feature cache's rule for which phases train on cached frozen-prefix features
(`sources.feature_split`) and the step budget's rule for repeated passes (`sources.epoch_passes`). `--halving` and
`--race` stop strategies on results not known yet: the plan is their worst case (every rung's keep count plus the
carried strategy; every strategy on every fold) and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from thawline.comparing.options import CompareOptions, check_options
from thawline.comparing.placement import full_speed_jobs
from thawline.comparing.schedulers import halving_keep, halving_rungs
from thawline.comparing.trials import Request, Trial, make_trials
from thawline.core.config import TrainConfig, replace
from thawline.data.discovery import Discovered
from thawline.data.folds import pooled
from thawline.data.image_cache import is_cached
from thawline.models.stages import StageMap, split_at, stage_map
from thawline.models.weights import build_model_with_info
from thawline.training.prepare import cache_dir, data_settings, discover_folder
from thawline.training.sources import epoch_passes, feature_split
from thawline.training.strategies import get_strategy, resolve

SAMPLE_IMAGES = 8  # images decoded to time decoding: enough to average out a file's size, milliseconds each


@dataclass(frozen=True)
class PhasePlan:
    """One phase of a trial: what trains, how long, and the work it does (counted over the whole phase)."""

    train: str  # the resolved selector (gradual's steps as last:k)
    first_trainable: int  # the lowest trainable stage (the head: n_stages)
    epochs: int
    cached: bool  # trains only the suffix, on cached frozen-prefix features
    steps: int  # optimizer steps
    train_images: int  # images (or feature rows) through the trainable part: steps' forward and backward passes
    feature_images: int  # frozen-prefix forward passes that fill the feature cache (0: an earlier trial filled it)
    val_images: int  # images evaluated after each epoch, over the phase
    solved_head: bool = False  # after its last epoch the head is also solved on every train image (headfit.py)


@dataclass(frozen=True)
class TrialPlan:
    trial: Trial
    model: str  # the trial's model (the config's outside a grid)
    phases: tuple[PhasePlan, ...]
    n_train: int
    n_val: int
    n_test: int

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    @property
    def lineage(self) -> tuple[str, str | None, int]:
        """The strategy, model and seed: what halving or the race stops as a whole (all its rungs, all its folds)."""
        return self.trial.strategy, self.trial.model, self.trial.seed

    @property
    def finish_images(self) -> int:
        """Images the best weights are evaluated on at the end (test and val, or val alone)."""
        return self.n_test + self.n_val if self.n_test else self.n_val


@dataclass
class ComparePlan:
    """Every trial's plan, and the scheduler's batches in order, worst case: each a list of requests (a compare
    runs its batches one after another, a batch's requests one after another or `jobs` at once)."""

    trials: dict[Trial, TrialPlan]
    batches: list[list[Request]]
    img_size: dict[str, int]  # per model
    interpolation: dict[str, str]  # per model: with the size, which image cache its data is decoded into
    n_stages: dict[str, int]  # per model
    rungs: dict[str | None, list[int]]  # halving's rungs per model (None outside a grid); empty without halving
    n_classes: int = 0
    batch_size: int = 32
    jobs: int = 1
    full_speed: int = 1  # how many of the `jobs` run at full speed at once (placement.full_speed_jobs)
    sample_paths: list[str] = field(default_factory=list)  # a few listed images: the decode cost is timed on them
    decode_images: int = 0  # images the compare decodes before training (0: all in the image cache already)
    notes: list[str] = field(default_factory=list)  # what the plan assumes (worst cases)

    @property
    def requests(self) -> list[Request]:
        return [r for batch in self.batches for r in batch]

    def start_epoch(self, request: Request) -> int:
        """The epoch a request continues from: the previous halving rung of its model (0 for a whole run)."""
        rungs = self.rungs.get(request.trial.model, [])
        until = request.until
        return max((r for r in rungs if until is not None and r < until), default=0)


def build_plan(config: TrainConfig, options: CompareOptions) -> ComparePlan:
    """The plan of `compare(config, options)`, refused in one line where the compare itself would refuse."""
    names, grid = check_options(config, options)
    if len(grid) == 1:  # one model is no grid, as in run_comparison: its trials carry no model
        config, grid = replace(config, model=grid[0]), []
    found = discover_folder(config)
    if options.folds:
        found = pooled(found)
    plan = ComparePlan({}, [], {}, {}, {}, {}, n_classes=len(found.classes), batch_size=config.batch_size,
                       jobs=options.jobs, full_speed=full_speed_jobs(options.jobs, config.device),
                       sample_paths=found.splits["train"].paths[:SAMPLE_IMAGES])
    features: dict[tuple, int] = {}  # (model, prefix, head kind, fold) -> train feature rows computed so far
    for model in grid or [None]:
        cfg = replace(config, model=model) if model else config
        probe, smap = probe_model(cfg, len(found.classes))
        plan.img_size[cfg.model], plan.interpolation[cfg.model] = data_settings(probe, cfg)[:2]
        plan.n_stages[cfg.model] = smap.n_stages
        trials = plan_trials(names, model, cfg, options)
        for trial in trials:
            plan.trials[trial] = trial_plan(trial, cfg, found, options.folds, probe, smap, features)
        plan.batches += plan_batches(trials, names, cfg, options, plan, model)
    plan.decode_images = decode_count(config, found, plan)
    return plan


def probe_model(config: TrainConfig, n_classes: int) -> tuple[nn.Module, StageMap]:
    """The model with random weights: its stages and input size without reading a weights file."""
    model = build_model_with_info(config.model, "none", n_classes, config.drop_rate)[0]
    return model, stage_map(model)


def plan_trials(names: list[str], model: str | None, config: TrainConfig, options: CompareOptions) -> list[Trial]:
    """The trials a compare makes: every strategy with each seed, or (`--folds K`) every strategy on each fold."""
    if options.folds:
        return [Trial(name, None, config.seed, fold) for fold in range(options.folds) for name in names]
    return make_trials(names, model, config.seed, options.seeds)


def fold_counts(n_pool: int, k: int) -> tuple[int, int]:
    """(train, val) images of one fold of `n_pool` pooled images: a fold validates on about a K-th of them."""
    val = round(n_pool / k)
    return n_pool - val, val


def trial_plan(
    trial: Trial,
    config: TrainConfig,
    found: Discovered,
    folds: int | None,
    probe: nn.Module,
    smap: StageMap,
    features: dict[tuple, int],
) -> TrialPlan:
    """A trial's phases with their counts; `features` says which frozen prefixes earlier trials already cached
    (the cache is keyed by prefix, not by strategy: head-only's features serve two-phase's first phase)."""
    count = {name: len(split.paths) for name, split in found.splits.items()}
    n_train, n_val, n_test = count.get("train", 0), count.get("val", 0), count.get("test", 0)
    if folds:
        n_train, n_val = fold_counts(n_train, folds)
    strategy = get_strategy(trial.strategy, config.strategies_file)
    phases = resolve(strategy, smap.n_stages, config.epochs)
    total = sum(p.epochs for p in phases)
    steps_per_pass = max(1, math.ceil(n_train / config.batch_size))
    views = 2 if config.hflip else 1
    planned = []
    head_split = split_at(probe, smap, smap.head)
    solvable = config.head_solver and head_split is not None and isinstance(head_split.suffix, nn.Linear)
    for i, phase in enumerate(phases):
        # solved_head.solvable_head: a linear head that trains alone from this phase to the end of the run
        solved = solvable and all(tuple(p.trainable) == (smap.head,) for p in phases[i:])
        cached = feature_split(config, phase, probe, smap) is not None
        head_only = tuple(phase.trainable) == (smap.head,)
        passes = epoch_passes(config, steps_per_pass, total, phase.epochs, head_only)
        first = min(phase.trainable)
        filled = 0
        key = (config.model, first, strategy.head)
        if cached and folds:  # one file for the pooled images (sources.features): a fold fills what earlier did not
            wanted = n_train * (views if phase.epochs > 1 else 1) + n_val
            done = features.get(key, 0)
            filled = max(0, min(wanted, (n_train + n_val) * views - done))
            features[key] = done + filled
        elif cached:  # the first epoch computes the views it draws; later epochs the rest, up front
            wanted = n_train * (views if phase.epochs > 1 else 1)
            done = features.get(key)
            filled = max(0, wanted - (done or 0)) + (n_val if done is None else 0)
            features[key] = max(wanted, done or 0)
        planned.append(PhasePlan(phase.train, first, phase.epochs, cached, steps_per_pass * passes * phase.epochs,
                                 n_train * passes * phase.epochs, filled, n_val * phase.epochs, solved))  # fmt: skip
    return TrialPlan(trial, config.model, tuple(planned), n_train, n_val, n_test)


def plan_batches(
    trials: list[Trial], names: list[str], config: TrainConfig, options: CompareOptions, plan: ComparePlan,
    model: str | None,
) -> list[list[Request]]:  # fmt: skip
    """The scheduler's batches, worst case: all trials at once; each halving rung with as many strategies as can
    reach it (the keep count and the carried one, the ones planned as costliest: `costliest_first`); each fold with
    every strategy (the race stops none)."""
    if options.folds:
        if options.race:
            plan.notes.append(f"--race: planned as if no strategy stops before the last of the {options.folds} "
                              "folds (the worst case)")  # fmt: skip
        return [[Request(t) for t in trials if t.fold == fold] for fold in range(options.folds)]
    if not options.halving:
        return [[Request(t) for t in trials]]
    assert config.epochs is not None  # check_options refused --halving without a budget
    rungs = halving_rungs(config.epochs, len(names))
    plan.rungs[model] = rungs
    reach = [len(names)] + [min(len(names), halving_keep(len(names), i) + 1) for i in range(1, len(rungs))]
    where = f" on {model}" if model else ""
    plan.notes.append(f"--halving{where}: rungs at epochs {', '.join(map(str, rungs))}; planned as if "
                      f"{', '.join(map(str, reach))} strategies reach them (the keep counts and the carried one: the "
                      "worst case), the costliest ones")  # fmt: skip
    batches = []
    for rung, n in zip(rungs, reach, strict=True):
        kept = costliest_first(names, lambda name: trial_work(plan, trials, name))[:n]
        batches.append([Request(t, rung) for t in trials if t.strategy in kept])
    return batches


# How much more an image costs through the whole network than through a suffix on cached features, to order the
# strategies before anything is timed (the demo's Lite0 at 80 px: 0.012 s a step-image on images, 0.001 to 0.010
# on features, by where the suffix starts). Only which strategies the halving plan counts as costliest follows.
IMAGE_STEP_WEIGHT = 4


def trial_work(plan: ComparePlan, trials: list[Trial], name: str) -> int:
    """A strategy's images through the network over its trials, those on images weighted: the cost order of the
    plan before any timing (the progress line orders by the estimate's seconds)."""
    return sum(p.train_images * (1 if p.cached else IMAGE_STEP_WEIGHT) for t in trials if t.strategy == name
               for p in plan.trials[t].phases)  # fmt: skip


def costliest_first(names: list[str], cost: Callable[[str], float]) -> list[str]:
    return sorted(names, key=lambda n: -cost(n))


def decode_count(config: TrainConfig, found: Discovered, plan: ComparePlan) -> int:
    """The images a compare decodes before its first step: every listed file at each model's input settings, less
    those the image cache holds already (its index is read, no image)."""
    inputs = {(plan.img_size[m], plan.interpolation[m]) for m in plan.img_size}
    return sum(len(split.paths) for size, interpolation in inputs for split in found.splits.values()
               if not is_cached(split.paths, size, interpolation, cache_dir(config)))  # fmt: skip
