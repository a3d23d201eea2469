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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from thawline.config import TrainConfig, atomic_write_text
from thawline.errors import ThawlineError

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
    data=None,
    strategy=None,
    out: str | os.PathLike | None = None,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    steps: int = STEPS,
    diverge: float = DIVERGE,
    beta: float = BETA,
    quiet: bool = False,
) -> LRFindResult:
    """Run the range test for the first phase of `config.strategy`; write lr_find.json/.png into `out` if given.

    `data` (a trainer.PreparedData) and `strategy` are reused when the caller already has them (`--lr auto`)."""
    from thawline import engine, runtime
    from thawline.cache import default_cache_dir
    from thawline.data import Normalize
    from thawline.models import apply_freezing
    from thawline.strategies import get_strategy, resolve
    from thawline.trainer import (
        _class_weights,
        _phase_source,
        build_run_model,
        data_settings,
        pick_device,
        prepare_data,
    )
    from thawline.weights import build_model_with_info

    if not 0 < start_lr < end_lr:
        raise ThawlineError(f"LR range {start_lr:g}..{end_lr:g}: needs 0 < start < end")
    if steps < 5:
        raise ThawlineError(f"--steps {steps}: the range test needs at least 5 steps")
    started = time.perf_counter()
    runtime.keep_freed_memory()
    strategy = strategy or get_strategy(config.strategy, config.strategies_file)
    device = pick_device(config)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    channels_last = config.channels_last if config.channels_last is not None else True
    if data is None:
        probe = build_model_with_info(config.model, "none", 2)[0]
        size, interp, _, _ = data_settings(probe, config)
        data = prepare_data(config, size, interp, quiet)
    weights = "none" if strategy.init == "random" else config.weights
    model, _, smap = build_run_model(config, weights, len(data.classes), device, channels_last)
    _, _, mean, std = data_settings(model, config)
    phase = resolve(strategy, smap.n_stages, config.epochs)[0]
    n_trainable = apply_freezing(model, smap, set(phase.trainable), phase.bn)
    optimizer = engine.build_optimizer(config, engine.stage_groups(model, smap, phase.trainable, config))
    # Layer-wise LR decay keeps its ratios: each group runs at lr * its multiplier.
    multipliers = [phase.layer_decay ** (smap.head - g["stage"]) for g in optimizer.param_groups]
    normalize = Normalize(mean, std, channels_last)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    source = _phase_source(model, smap, phase, config, data, normalize, device, cache_dir, quiet, "lr-find")
    # The same loss as training (class weights included), or the range test measures something else.
    weight = _class_weights(data.splits["train"].labels, len(data.classes)) if config.class_weights == "auto" else None
    loss_fn = nn.CrossEntropyLoss(
        weight=weight.to(device) if weight is not None else None, label_smoothing=config.label_smoothing
    )
    ratio = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    best = math.inf
    avg = 0.0
    stopped_early = False
    bar = tqdm(total=steps, desc="lr-find", unit="step", disable=quiet or not sys.stderr.isatty(), leave=False)
    try:
        epoch = 0
        while len(lrs) < steps and not stopped_early:
            for x, y in source.train_batches(epoch):
                lr = start_lr * ratio ** len(lrs)
                for g, m in zip(optimizer.param_groups, multipliers, strict=True):
                    g["lr"] = lr * m
                x, y = x.to(device), y.to(device)
                with engine.autocast(device, amp):
                    if source.dropout > 0:
                        x = nn.functional.dropout(x, p=source.dropout, training=True)
                    loss = loss_fn(source.forward(x).float(), y)
                value = float(loss.detach())
                lrs.append(lr)
                losses.append(value)
                bar.update(1)
                if not math.isfinite(value):
                    smoothed.append(math.inf)
                    stopped_early = True
                    break
                avg = beta * avg + (1 - beta) * value
                s = avg / (1 - beta ** len(lrs))
                smoothed.append(s)
                best = min(best, s)
                if len(lrs) > 1 and s > diverge * best:
                    stopped_early = True
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if len(lrs) >= steps:
                    break
            epoch += 1
    finally:
        bar.close()
        source.close()
    # A diverged last point (inf or > diverge x best) is kept for the plot but not used for the suggestion.
    usable = len(smoothed) - 1 if stopped_early else len(smoothed)
    pick = suggestion(lrs[: max(usable, 1)], smoothed[: max(usable, 1)])
    info = {
        "model": config.model,
        "weights": weights,
        "strategy": strategy.name,
        "phase": phase.to_dict(),
        "trainable_params": n_trainable,
        "strategy_first_phase_lr": phase.lr,
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
    result = LRFindResult(
        lrs,
        losses,
        smoothed,
        pick.lr,
        pick.method,
        pick.min_loss_lr,
        pick.valley_lr,
        pick.steepest_lr,
        stopped_early,
        info,
    )
    if out is not None:
        write_lr_find(Path(out), result)
    return result


def suggest_lr(config: TrainConfig, *, data=None, strategy=None, out=None, quiet: bool = True, **options) -> float:
    """The LR range test's suggested first-phase LR for `config` (what `--lr auto` uses)."""
    return lr_find(config, data=data, strategy=strategy, out=out, quiet=quiet, **options).suggested_lr


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


def write_lr_find(out: Path, result: LRFindResult) -> list[Path]:
    """lr_find.json (curve + suggestion) and lr_find.png (loss vs log LR, suggestion marked) into `out`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ThawlineError(f"cannot create '{out}' ({e.strerror}); pass a writable --out") from None
    payload = result.to_dict()
    payload["smoothed"] = [s if math.isfinite(s) else None for s in result.smoothed]
    payload["losses"] = [v if math.isfinite(v) else None for v in result.losses]
    json_path = out / "lr_find.json"
    atomic_write_text(json_path, json.dumps(payload, indent=2))
    png_path = out / "lr_find.png"
    _plot(png_path, result)
    result.files = [json_path, png_path]
    return result.files


def _plot(path: Path, result: LRFindResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = np.asarray(result.lrs)
    raw = np.asarray([v if math.isfinite(v) else np.nan for v in result.losses])
    sm = np.asarray([v if math.isfinite(v) else np.nan for v in result.smoothed])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.plot(lrs, raw, color="#bbbbbb", lw=0.8, label="loss")
    ax.plot(lrs, sm, color="#1f77b4", lw=1.8, label="smoothed loss")
    finite = sm[np.isfinite(sm)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite[0])
        ax.set_ylim(lo - 0.1 * abs(hi - lo) - 1e-3, max(hi, lo) + 0.6 * abs(hi - lo) + 1e-3)
    y_at = float(np.interp(np.log10(result.suggested_lr), np.log10(lrs), np.nan_to_num(sm, nan=np.nanmax(sm))))
    ax.axvline(result.suggested_lr, color="#d62728", ls="--", lw=1)
    ax.plot([result.suggested_lr], [y_at], "o", color="#d62728", label=f"suggested {result.suggested_lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (first phase)")
    ax.set_ylabel("training loss")
    info = result.info
    ax.set_title(f"LR range test: {info.get('model')} / {info.get('strategy')} ({result.method})", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
