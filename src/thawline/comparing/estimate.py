"""How long a comparison's plan takes here, without training it: each kind of work timed for a few steps on random
inputs at the plan's batch and image size, multiplied by the plan's counts.

The kinds: an optimizer step (forward, backward, AdamW) of the whole network from each phase's lowest trainable
stage on images, or of the suffix alone on cached features; the frozen prefix's forward pass that fills the feature
cache; the evaluation of val (suffix or whole network) and, at the end, of the best weights; a model's set-up and its
checkpoints; decoding an image. A compare under load, on another device or reading features an earlier compare
cached runs faster or slower: an estimate, said as one. The progress line corrects it by the trials that finished.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from thawline.comparing.plan import ComparePlan, PhasePlan, TrialPlan
from thawline.comparing.trials import Request
from thawline.core.config import TrainConfig, replace
from thawline.data.images import BadImage, decode_resized
from thawline.models.stages import StageMap, apply_freezing, eval_mode, split_at
from thawline.training import runtime
from thawline.training.engine import autocast
from thawline.training.prepare import build_run_model, pick_device

TIMED_STEPS = 3  # after one untimed step (allocations, kernel choice): a few seconds in all on a CPU


@dataclass
class Costs:
    """Seconds per unit of work, per model: `step[(model, first, cached)]` per image of an optimizer step from
    stage `first` up (on cached features when `cached`), `val[(model, first, cached)]` per image evaluated in such
    a phase, `prefix[(model, first)]` per image through the frozen prefix below `first`, `full[model]` per image
    through the whole network (the final evaluation), `setup[model]` per request (the model built),
    `checkpoint[model]` per epoch; `decode` per image decoded."""

    step: dict[tuple[str, int, bool], float] = field(default_factory=dict)
    val: dict[tuple[str, int, bool], float] = field(default_factory=dict)
    prefix: dict[tuple[str, int], float] = field(default_factory=dict)
    full: dict[str, float] = field(default_factory=dict)
    setup: dict[str, float] = field(default_factory=dict)
    checkpoint: dict[str, float] = field(default_factory=dict)
    solve: dict[str, float] = field(default_factory=dict)  # per train image: head-only's solved head (headfit.py)
    decode: float = 0.0
    seconds: float = 0.0  # how long measuring took


def timed(fn: Callable[[], object], repeats: int = TIMED_STEPS) -> float:
    """Seconds of a call of `fn`: the median of `repeats` calls after one untimed one (on a shared CPU a call now
    and then stalls for a second; the median leaves it out)."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def measure_costs(plan: ComparePlan, config: TrainConfig) -> Costs:
    """Every kind of work the plan holds, timed here (on the config's device, with its AMP and memory layout)."""
    started = time.perf_counter()
    runtime.keep_freed_memory()  # as training runs: ~1.8x faster steps on a CPU than with fresh pages each step
    costs = Costs()
    device = pick_device(config)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    channels_last = config.channels_last if config.channels_last is not None else True
    for model_name in plan.img_size:
        kinds = {(p.first_trainable, p.cached) for t in plan.trials.values() if t.model == model_name for p in t.phases}
        measure_model(costs, replace(config, model=model_name), plan, kinds, device, amp, channels_last)
    costs.decode = decode_seconds(plan)
    runtime.release_freed_memory()
    costs.seconds = time.perf_counter() - started
    return costs


def measure_model(
    costs: Costs,
    config: TrainConfig,
    plan: ComparePlan,
    kinds: set[tuple[int, bool]],
    device: torch.device,
    amp: bool,
    channels_last: bool,
) -> None:
    name, bs, size = config.model, plan.batch_size, plan.img_size[config.model]
    start = time.perf_counter()
    # as a run builds it (its layout, its CPU depthwise kernels), with random weights: the same work per step
    model, _, smap = build_run_model(config, "none", plan.n_classes, device, channels_last)
    costs.setup[name] = time.perf_counter() - start
    x = torch.randn(bs, 3, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = torch.randint(0, plan.n_classes, (bs,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step_of(forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> Callable[[], None]:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                loss = loss_fn(forward(inputs).float(), y)
            loss.backward()
            optimizer.step()
            sync(device)

        return step

    def inference(forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            with eval_mode(model), torch.no_grad(), autocast(device, amp):
                forward(inputs)
            sync(device)

        return run

    costs.full[name] = timed(inference(model, x)) / bs
    for first, cached in sorted(kinds):
        apply_freezing(model, smap, set(range(first, smap.head + 1)))
        split = split_at(model, smap, first) if cached else None
        if split is None:
            costs.step[(name, first, cached)] = timed(step_of(model, x)) / bs
            costs.val[(name, first, cached)] = costs.full[name]
            continue
        with eval_mode(model), torch.no_grad(), autocast(device, amp):
            features = split.prefix(x).float()  # the cache holds them as float, as read back
        costs.prefix[(name, first)] = timed(inference(split.prefix, x)) / bs
        costs.step[(name, first, cached)] = timed(step_of(split.suffix, features)) / bs
        costs.val[(name, first, cached)] = timed(inference(split.suffix, features)) / bs
    if any(p.solved_head for t in plan.trials.values() if t.model == name for p in t.phases):
        costs.solve[name] = solve_seconds(model, smap, x, plan.n_classes)
    buffer = io.BytesIO()
    # last.pt holds the model and AdamW's two moments (about three models); best.pt, when val improves, one more
    costs.checkpoint[name] = 4 * timed(lambda: torch.save(model.state_dict(), buffer), 1)


SOLVE_SAMPLE = 512  # rows one loss evaluation of the head solver is timed on; its time grows linearly with them
# The solver's loss evaluations per train image, in evaluations of the whole set: 7 values of C x 5 folds of
# cross-validation and the final fit, each L-BFGS run ~100 evaluations. The 100 is measured, not derived: the demo's
# head-only (1000 images, 1280 features, 10 classes) spent 19 s solving, about 3,600 evaluations' worth.
SOLVE_EVALUATIONS = (7 * 5 + 1) * 100


def solve_seconds(model: nn.Module, smap: StageMap, x: torch.Tensor, n_classes: int) -> float:
    """Seconds per train image of the head solver (headfit.py): one loss and gradient evaluation of the logistic
    regression, timed on random features of the classifier's width, times the evaluations a solve makes."""
    split = split_at(model, smap, smap.head)
    assert split is not None
    with eval_mode(model), torch.no_grad():
        width = split.prefix(x[:1]).float().shape[-1]
    rows = torch.randn(SOLVE_SAMPLE, width)
    labels = torch.arange(SOLVE_SAMPLE) % n_classes
    weight = torch.zeros(n_classes, width, requires_grad=True)

    def evaluation() -> None:
        weight.grad = None
        nn.functional.cross_entropy(rows @ weight.T, labels).backward()

    return timed(evaluation, 5) / SOLVE_SAMPLE * SOLVE_EVALUATIONS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_seconds(plan: ComparePlan) -> float:
    """Seconds per image decoded, by the decode workers (one per core) together."""
    if not plan.decode_images or not plan.sample_paths:
        return 0.0
    size = next(iter(plan.img_size.values()))
    interpolation = next(iter(plan.interpolation.values()))
    start, n = time.perf_counter(), 0
    for path in plan.sample_paths:
        try:
            decode_resized(path, size, interpolation)
            n += 1
        except BadImage:
            pass
    return (time.perf_counter() - start) / max(1, n) / max(1, os.cpu_count() or 1)


@dataclass
class Estimate:
    """The plan's seconds: per request, per batch (with `jobs` at once), and in all."""

    plan: ComparePlan
    costs: Costs

    def epoch_seconds(self, trial: TrialPlan) -> list[float]:
        """One entry per global epoch: its steps, its val evaluation and checkpoint, and in a phase's first epoch
        the feature cache's filling (the rest of the views are computed after it, before the second)."""
        out = []
        for phase in trial.phases:
            per_epoch = self.phase_seconds(trial.model, phase) / phase.epochs
            fill = phase.feature_images * self.costs.prefix.get((trial.model, phase.first_trainable), 0.0)
            out += [per_epoch + (fill if e == 0 else 0.0) for e in range(phase.epochs)]
            if phase.solved_head:
                out[-1] += trial.n_train * self.costs.solve.get(trial.model, 0.0)
        return out

    def phase_seconds(self, model: str, phase: PhasePlan) -> float:
        """Steps, val evaluations and checkpoints of a phase, without the feature cache's filling."""
        key = (model, phase.first_trainable, phase.cached)
        return (phase.train_images * self.costs.step[key] + phase.val_images * self.costs.val[key]
                + phase.epochs * self.costs.checkpoint[model])  # fmt: skip

    def request_seconds(self, request: Request) -> float:
        """A request: its model built, its epochs from where it continues, and the final evaluation when it ends
        the run."""
        trial = self.plan.trials.get(request.trial)
        if trial is None:  # not in the plan (a compare resumed with other options refuses earlier): no weight
            return 0.0
        start = self.plan.start_epoch(request)
        until = trial.epochs if request.until is None else min(request.until, trial.epochs)
        finish = trial.finish_images * self.costs.full[trial.model] if until == trial.epochs else 0.0
        return self.costs.setup[trial.model] + sum(self.epoch_seconds(trial)[start:until]) + finish

    def trial_seconds(self, trial: TrialPlan) -> float:
        """A trial trained to its whole budget in one request."""
        return self.request_seconds(Request(trial.trial))

    @property
    def decode_seconds(self) -> float:
        return self.plan.decode_images * self.costs.decode

    def batch_seconds(self, batch: list[Request]) -> float:
        """A batch's wall time: its requests one after another, or as many at a time as run at full speed (one per
        GPU; on a CPU the cores over each worker's threads)."""
        return sum(map(self.request_seconds, batch)) / max(1, min(self.plan.full_speed, len(batch)))

    @property
    def training_seconds(self) -> float:
        return sum(self.batch_seconds(b) for b in self.plan.batches)

    @property
    def total_seconds(self) -> float:
        return self.decode_seconds + self.training_seconds


def estimate(plan: ComparePlan, config: TrainConfig) -> Estimate:
    return Estimate(plan, measure_costs(plan, config))
