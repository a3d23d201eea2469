"""Learning-rate range test (fastai / Leslie Smith): raise the LR exponentially each step and watch the loss.

The test trains what the strategy's first phase trains (same frozen stages, BatchNorm policy, feature cache,
optimizer and param groups as `thawline train`) on a throwaway copy of the model, from `start_lr` to `end_lr`
over `steps` minibatches, and stops once the smoothed loss exceeds `diverge` x its best.

The suggested LR is fastai's "valley" (its default since 2.5): the longest run of falling smoothed loss, and the
point half-way down it. The steepest-slope point and the LR at the minimum / 10 are recorded too; on curves
measured here (EfficientNet-Lite0, Fashion-MNIST) the steepest slope sat at the edge of divergence (1e-2 for
full fine-tuning, where 1e-4 to 3e-4 trains well) and noise at the tiny first LRs could win it, while the
valley gave 3e-4 (full) and 8e-4 (head). With fewer than 5 points the suggestion is min / 10. `--lr X` means
the first phase's LR, so the suggestion can be passed straight to `thawline train --lr`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from thawline.core.atomic import write_text_atomic
from thawline.core.config import TrainConfig
from thawline.core.errors import ThawlineError
from thawline.models.stages import apply_freezing, trainable_names
from thawline.report.plots import plot_lr_find
from thawline.training import engine, runtime
from thawline.training.prepare import PreparedData, RunSetup, prepare_data, setup_run
from thawline.training.sources import PhaseSource, phase_source
from thawline.training.strategies import Strategy, get_strategy

START_LR = 1e-7
END_LR = 10.0
STEPS = 100
DIVERGE = 4.0
BETA = 0.98  # loss smoothing (exponential moving average, bias-corrected)


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    method: str  # "valley" or "min/10"
    min_loss_lr: float
    valley_lr: float | None
    steepest_lr: float | None
    stopped_early: bool
    info: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("files")
        return d


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """Bias-corrected exponential moving average, as fastai's LR finder plots it."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


@dataclass
class Suggestion:
    lr: float
    method: str  # "valley" or "min/10"
    min_loss_lr: float
    valley_lr: float | None
    steepest_lr: float | None


def valley_index(loss: np.ndarray) -> tuple[int, int, int]:
    """(start, end, pick) of the longest decreasing run of `loss` (as a subsequence); pick is half-way down it."""
    n = len(loss)
    lds = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if loss[i] < loss[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[i] > lds[end]:
            end = i
            start = max(0, end - lds[end])
    third = (end - start) / 3
    return start, end, min(n - 1, max(0, start + int(third) + int(third / 2)))


def suggestion(
    lrs: list[float], smoothed: list[float], skip_start: int = 10, skip_end: int = 5, min_points: int = 5
) -> Suggestion:
    """The suggested LR of a smoothed loss curve (valley; min / 10 with too few points) and the alternatives."""
    if not lrs:
        raise ThawlineError("the LR range test recorded no step; check the data and batch size")
    loss = np.asarray(smoothed, dtype=np.float64)
    loss = np.where(np.isfinite(loss), loss, np.inf)
    i_min = int(np.argmin(loss))
    min_lr = float(lrs[i_min])
    if len(lrs) < min_points:
        return Suggestion(min_lr / 10, "min/10", min_lr, None, None)
    valley = float(lrs[valley_index(loss)[2]])
    steepest = None
    lo, hi = min(skip_start, len(lrs) // 4), len(lrs) - min(skip_end, len(lrs) // 4)
    if hi - lo >= 3:
        slope = np.gradient(loss[lo:hi], np.log10(np.asarray(lrs[lo:hi])))
        steepest = float(lrs[lo + int(np.argmin(slope))])
    return Suggestion(valley, "valley", min_lr, valley, steepest)


def lr_find(
    config: TrainConfig,
    *,
    data: PreparedData | None = None,
    strategy: Strategy | None = None,
    out: str | os.PathLike | None = None,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    steps: int = STEPS,
    diverge: float = DIVERGE,
    beta: float = BETA,
    quiet: bool = False,
    phase_index: int = 0,
    model_state: dict[str, Any] | None = None,
) -> LRFindResult:
    """Run the range test for a phase of `config.strategy` (the first by default); write lr_find.json/.png into
    `out` if given. `model_state`: the weights to start from instead of the initial ones (`--lr auto` runs the
    test for each later phase from the weights the run has when that phase starts).

    `data` and `strategy` are reused when the caller already has them (`--lr auto`). The test drives the one
    training loop, `engine.train_one_epoch`: an exponential `set_lr`, and a progress hook that records each
    step's loss and ends the epoch once the smoothed loss diverges (fastai's LRFinder is a callback the same way).
    """
    if not 0 < start_lr < end_lr:
        raise ThawlineError(f"LR range {start_lr:g}..{end_lr:g}: needs 0 < start < end")
    if steps < 5:
        raise ThawlineError(f"--steps {steps}: the range test needs at least 5 steps")
    started = time.perf_counter()
    runtime.keep_freed_memory()
    strategy = strategy or get_strategy(config.strategy, config.strategies_file)
    if data is None:
        data = prepare_data(config, quiet)
    setup = setup_run(config, strategy, data)  # a throwaway model, built as the run builds it
    if model_state is not None:
        setup.model.load_state_dict(model_state)
    phase = setup.phases[phase_index]
    n_trainable = apply_freezing(setup.model, setup.smap, set(phase.trainable), phase.bn, phase.kinds)
    names = trainable_names(setup.model, setup.smap, phase.trainable, phase.kinds)
    groups = engine.stage_groups(setup.model, setup.smap, phase.trainable, config, names)
    optimizer = engine.build_optimizer(config, groups)
    # Layer-wise LR decay and the head's multiple keep their ratios: each group runs at lr * its multiplier.
    multipliers = [phase.lr_multiplier(g["stage"], setup.smap.head) for g in optimizer.param_groups]
    source = phase_source(setup, phase, "lr-find", quiet)
    recorder = _Recorder(start_lr, (end_lr / start_lr) ** (1 / (steps - 1)), steps, diverge, beta)

    def set_lr() -> None:
        recorder.lr = recorder.next_lr()
        for g, m in zip(optimizer.param_groups, multipliers, strict=True):
            g["lr"] = recorder.lr * m

    try:
        _run_range(recorder, source, optimizer, setup, set_lr, quiet)
    finally:
        source.close()
    info = {
        "model": config.model,
        "weights": setup.weights,
        "strategy": strategy.name,
        "phase": phase.to_dict(),
        "trainable_params": n_trainable,
        "strategy_phase_lr": phase.lr,
        "img_size": data.img_size,
        "batch_size": config.batch_size,
        "num_train": len(data.splits["train"]),
        "feature_cache": source.cached,
        "start_lr": start_lr,
        "end_lr": end_lr,
        "steps": steps,
        "diverge": diverge,
        "beta": beta,
        "seconds": round(time.perf_counter() - started, 2),
    }
    result = recorder.result(info)
    if out is not None:
        write_lr_find(Path(out), result)
    return result


def _run_range(
    recorder: _Recorder,
    source: PhaseSource,
    optimizer: torch.optim.Optimizer,
    setup: RunSetup,
    set_lr: Callable[[], None],
    quiet: bool,
) -> None:
    """Train epochs of the phase's batches until the recorder has its steps or the loss diverged."""
    bar = tqdm(total=recorder.steps, desc="lr-find", unit="step", disable=quiet or not sys.stderr.isatty(), leave=False)
    try:
        epoch = 0
        while not recorder.done:
            try:
                engine.train_one_epoch(
                    source.forward, source.train_batches(epoch, 0), optimizer, setup.loss_fn, set_lr, setup.device,
                    setup.amp, progress=lambda n, loss: recorder.record(float(loss), bar), dropout=source.dropout,
                )  # fmt: skip
            except engine.NonFiniteLoss as e:
                recorder.record(e.value, bar)
            epoch += 1
    finally:
        bar.close()


class _Recorder:
    """The range test's state across steps: LRs and losses so far, the smoothed loss, and when to stop."""

    def __init__(self, start_lr: float, ratio: float, steps: int, diverge: float, beta: float) -> None:
        self.start_lr, self.ratio, self.steps, self.diverge, self.beta = start_lr, ratio, steps, diverge, beta
        self.lr = start_lr
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.best = math.inf
        self.avg = 0.0
        self.stopped_early = False

    @property
    def done(self) -> bool:
        return self.stopped_early or len(self.lrs) >= self.steps

    def next_lr(self) -> float:
        return self.start_lr * self.ratio ** len(self.lrs)

    def record(self, loss: float, bar: tqdm) -> bool:
        """Log this step's loss at its LR; True (stop) on a non-finite or diverged loss or after the last step."""
        self.lrs.append(self.lr)
        self.losses.append(loss)
        bar.update(1)
        if not math.isfinite(loss):
            self.smoothed.append(math.inf)
            self.stopped_early = True
            return True
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        s = self.avg / (1 - self.beta ** len(self.lrs))
        self.smoothed.append(s)
        self.best = min(self.best, s)
        if len(self.lrs) > 1 and s > self.diverge * self.best:
            self.stopped_early = True
        return self.done

    def result(self, info: dict[str, Any]) -> LRFindResult:
        # A diverged last point (inf or > diverge x best) is kept for the plot but not used for the suggestion.
        usable = max(len(self.smoothed) - 1 if self.stopped_early else len(self.smoothed), 1)
        pick = suggestion(self.lrs[:usable], self.smoothed[:usable])
        return LRFindResult(
            self.lrs, self.losses, self.smoothed, pick.lr, pick.method, pick.min_loss_lr, pick.valley_lr,
            pick.steepest_lr, self.stopped_early, info,
        )  # fmt: skip


def resolve_auto_lr(
    config: TrainConfig, *, data=None, strategy=None, resume_dir: str | os.PathLike | None = None, quiet: bool = False
) -> tuple[TrainConfig, LRFindResult | None]:
    """`config` with `lr="auto"` replaced by the range test's suggestion, and the test's result (to write later).

    On resume, the LR recorded in resume_dir/lr_find.json is reused, so a resumed run keeps its schedule."""
    import dataclasses

    if config.lr != "auto":
        return config, None
    saved = Path(resume_dir) / "lr_find.json" if resume_dir else None
    if saved is not None and saved.is_file():
        try:
            lr = float(json.loads(saved.read_text(encoding="utf-8"))["suggested_lr"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ThawlineError(f"'{saved}' is unreadable; delete it to rerun the LR range test") from None
        return dataclasses.replace(config, lr=lr), None
    result = lr_find(config, data=data, strategy=strategy, quiet=True)
    if not quiet:
        print(
            f"[{result.info['strategy']}] --lr auto: LR range test suggests {result.suggested_lr:.2e} "
            f"({result.method}, {len(result.lrs)} steps)",
            flush=True,
        )
    return dataclasses.replace(config, lr=result.suggested_lr), result


def write_lr_find(out: Path, result: LRFindResult, stem: str = "lr_find") -> list[Path]:
    """<stem>.json (curve + suggestion) and <stem>.png (loss vs log LR, suggestion marked) into `out`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ThawlineError(f"cannot create '{out}' ({e.strerror}); pass a writable --out") from None
    payload = result.to_dict()
    payload["smoothed"] = [s if math.isfinite(s) else None for s in result.smoothed]
    payload["losses"] = [v if math.isfinite(v) else None for v in result.losses]
    json_path = out / f"{stem}.json"
    write_text_atomic(json_path, json.dumps(payload, indent=2))
    png_path = out / f"{stem}.png"
    title = f"LR range test: {result.info.get('model')} / {result.info.get('strategy')} ({result.method})"
    plot_lr_find(png_path, result.lrs, result.losses, result.smoothed, result.suggested_lr, title)
    result.files = [json_path, png_path]
    return result.files
