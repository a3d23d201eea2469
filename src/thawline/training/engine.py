"""The one training loop: train_one_epoch / evaluate, the optimizer across phases, and the LR schedule.

Every strategy runs through these functions; a strategy only changes which parameters are trainable and
what the forward function is (the whole model, or the trainable suffix over cached frozen-prefix features).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thawline.core.config import TrainConfig
from thawline.models.stages import StageMap, eval_mode, trainable_names
from thawline.training import distributed
from thawline.training.strategies import ResolvedPhase

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float


@dataclass
class EvalResult:
    loss: float
    acc: float
    logits: torch.Tensor  # (N, C) float32, in batch order
    labels: torch.Tensor  # (N,)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def train_one_epoch(
    forward: Forward,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    set_lr: Callable[[], None],
    device: torch.device,
    amp: bool = False,
    progress: Callable[[int, torch.Tensor], bool | None] | None = None,
    dropout: float = 0.0,
    across_ranks: bool = False,
) -> EpochStats:
    """One pass over `batches`; `set_lr` is called before every step (the schedule is a pure function of it).

    `progress(n, loss)` runs after every step with the step's loss as a 0-d tensor (`float()` it: on a GPU that
    waits for the step); when it returns True the epoch ends there (the LR range test stops on divergence so).

    With `across_ranks` (DDP, `forward` wrapped in DistributedDataParallel), each rank holds its share of a
    global batch: its mean loss is rescaled by its share (of the samples, or of the class weights with a weighted
    loss) so that DDP's gradient average equals the global batch's mean gradient even when the shares differ, and
    the epoch's statistics are summed over ranks.

    On a GPU the loop never waits for a step to finish before queuing the next: the sums stay on the device, and
    a non-finite loss is caught one step late (the weights it reached are never validated or saved: the error
    ends the run). On a CPU it is caught before its step, at no cost."""
    start = time.perf_counter()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    late_check = device.type == "cuda" and not across_ranks
    pending: torch.Tensor | None = None  # the previous step's loss, checked once this step is queued
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        set_lr()
        with autocast(device, amp):
            if dropout > 0:
                x = F.dropout(x, p=dropout, training=True)
            logits = forward(x)
            loss = loss_fn(logits.float(), y)
        backward_loss = loss
        n = y.shape[0]
        stat_weight = float(n)  # this batch's weight in the epoch's mean loss
        if across_ranks:
            # One small collective: the global batch's loss normaliser, and whether any rank's loss is not finite.
            # A mean loss divides by the batch size, a class-weighted one by the sum of its samples' weights.
            weight = getattr(loss_fn, "weight", None)
            share = float(weight[y].sum()) if weight is not None else float(y.shape[0])
            total, n_global, bad = distributed.all_reduce_sum([share, float(n), float(not torch.isfinite(loss))])
            if bad:
                raise NonFiniteLoss(float(loss.detach()) if not torch.isfinite(loss) else float("nan"))
            backward_loss = loss * (share * distributed.world_size() / total)
            stat_weight = share * n_global / total  # summed over ranks: the global batch's mean loss x its size
        elif not late_check and not torch.isfinite(loss):
            raise NonFiniteLoss(float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        backward_loss.backward()
        optimizer.step()
        loss = loss.detach()
        total_loss += loss.double() * stat_weight
        correct += (logits.argmax(1) == y).sum()
        seen += n
        if pending is not None and not torch.isfinite(pending):
            raise NonFiniteLoss(float(pending))
        pending = loss if late_check else None
        if progress and progress(n, loss):
            pending = None  # the hook saw this loss and ended the epoch
            break
    if pending is not None and not torch.isfinite(pending):
        raise NonFiniteLoss(float(pending))
    seconds = time.perf_counter() - start
    loss_sum, n_correct = float(total_loss), int(correct)
    if across_ranks:
        loss_sum, n_correct, seen = distributed.all_reduce_sum([loss_sum, float(n_correct), float(seen)])
        n_correct, seen = int(n_correct), int(seen)
    return EpochStats(loss_sum / max(seen, 1), n_correct / max(seen, 1), seen, seconds)


class NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        super().__init__(f"loss became {value}")
        self.value = value


@torch.inference_mode()
def evaluate(
    forward: Forward,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    amp: bool = False,
    model: nn.Module | None = None,
    across_ranks: bool = False,
) -> EvalResult:
    """Loss and accuracy over `batches`; `model` (the module behind `forward`) runs in eval mode meanwhile.

    Without eval mode, BatchNorm in training stages would normalise each (class-sorted) val batch by its own
    statistics; the train/eval mode of every module is restored afterwards, so the phase's freezing holds.
    With `across_ranks`, every rank evaluates a contiguous shard and the logits are gathered in rank order,
    so loss and accuracy are over the whole split (the same numbers as one process)."""
    all_logits, all_labels = [], []
    with eval_mode(model), torch.inference_mode():
        for x, y in batches:
            with autocast(device, amp):
                all_logits.append(forward(x.to(device, non_blocking=True)).float())  # copied once, at the end
            all_labels.append(y)
    logits = torch.cat(all_logits).cpu() if all_logits else torch.zeros(0, 0)
    # on the CPU like the logits: prefetched batches (`prefetch.py`) bring their labels to the device already
    labels = torch.cat(all_labels).cpu() if all_labels else torch.zeros(0, dtype=torch.long)
    if across_ranks:
        logits, labels = distributed.all_gather_cat(logits), distributed.all_gather_cat(labels)
    if len(labels) == 0:
        return EvalResult(float("nan"), float("nan"), logits, labels)
    loss = float(F.cross_entropy(logits, labels))
    acc = float((logits.argmax(1) == labels).float().mean())
    return EvalResult(loss, acc, logits, labels)


# ---- optimizer across phases -------------------------------------------------------------------------


def build_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=groups[0]["lr"])
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=0.9, nesterov=True)


def stage_groups(
    model: nn.Module,
    smap: StageMap,
    stages: Iterable[int],
    config: TrainConfig,
    names: Collection[str] | None = None,
) -> list[dict]:
    """Param groups, one or two per stage: no weight decay on biases and norm weights (1-d tensors).

    `names`: only these parameters (a phase's trainable ones, see `models.trainable_names`); default every
    parameter of the stages. Each group records its parameters' names, so a resume rebuilds exactly these groups.
    """
    params = dict(model.named_parameters())
    wanted = set(names) if names is not None else None
    groups = []
    for s in stages:
        named = [(n, params[n]) for n in smap.params[s] if wanted is None or n in wanted]
        decay = [(n, p) for n, p in named if p.ndim > 1]
        no_decay = [(n, p) for n, p in named if p.ndim <= 1]
        wd = config.weight_decay if config.optimizer != "adam" else 0.0
        for group, w, tag in ((decay, wd, True), (no_decay, 0.0, False)):
            if group:
                groups.append(
                    {
                        "params": [p for _, p in group],
                        "names": [n for n, _ in group],
                        "weight_decay": w,
                        "stage": s,
                        "decay": tag,
                        "lr": 0.0,
                        "base_lr": 0.0,
                    }
                )
    return groups


def enter_phase(
    optimizer: torch.optim.Optimizer | None,
    model: nn.Module,
    smap: StageMap,
    phase: ResolvedPhase,
    config: TrainConfig,
    lr_scale: float,
) -> torch.optim.Optimizer:
    """Keep optimizer state of parameters already training; add newly thawed parameters as new param groups.

    The phase trains exactly `models.trainable_names` (what `apply_freezing` gave requires_grad): whole stages, or
    only some parameter kinds in them (`phase.kinds`). Parameters already in the optimizer keep their group and
    state; the new ones join as groups per stage. A group with none of the phase's parameters gets LR 0 (its
    parameters are frozen, have no gradient and are skipped by the optimizer)."""
    selected = trainable_names(model, smap, phase.trainable, phase.kinds)
    by_name = dict(model.named_parameters())
    present = {id(p) for g in optimizer.param_groups for p in g["params"]} if optimizer else set()
    new = [n for n in selected if id(by_name[n]) not in present]
    stage_of = smap.stage_of()
    new_stages = [s for s in phase.trainable if any(stage_of[n] == s for n in new)]
    if optimizer is None:
        optimizer = build_optimizer(config, stage_groups(model, smap, new_stages, config, new))
    else:
        for g in stage_groups(model, smap, new_stages, config, new):
            optimizer.add_param_group(g)
    top = smap.head
    training = {id(by_name[n]) for n in selected}
    for g in optimizer.param_groups:
        active = g["stage"] in phase.trainable and any(id(p) in training for p in g["params"])
        # Layer-wise LR decay: the head gets the phase LR (times its own multiple), each stage below it one more
        # factor of decay.
        g["base_lr"] = phase.lr * lr_scale * phase.lr_multiplier(g["stage"], top) if active else 0.0
        g["lr"] = g["base_lr"]
    return optimizer


def rebuild_optimizer(
    model: nn.Module,
    smap: StageMap,
    config: TrainConfig,
    stage_order: list[int],
    saved_groups: list[dict] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer with param groups in the saved order, ready for `load_state_dict` on resume.

    `saved_groups` (the saved optimizer state's param_groups) rebuild each group from the parameter names it
    recorded: exact also when a phase trained only some kinds of a stage's parameters. Checkpoints without names
    (saved before groups recorded them, whole stages only) rebuild from the stage order."""
    if saved_groups and all("names" in g for g in saved_groups):
        params = dict(model.named_parameters())
        groups = [
            {k: g[k] for k in ("names", "weight_decay", "stage", "decay")}
            | {"params": [params[n] for n in g["names"]], "lr": 0.0, "base_lr": 0.0}
            for g in saved_groups
        ]
        return build_optimizer(config, groups)
    seen: list[int] = []
    for s in stage_order:
        if s not in seen:
            seen.append(s)
    return build_optimizer(config, stage_groups(model, smap, seen, config))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up then cosine to 1% (or constant), within one phase."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor


class PhaseSchedule:
    """`set_lr` for the steps of one epoch: every param group at its base LR x `lr_factor` of the step within
    the phase, so the schedule continues exactly across epochs and resumes."""

    def __init__(self, optimizer: torch.optim.Optimizer, first_step: int, total: int, warmup: int, kind: str) -> None:
        self.optimizer, self.step, self.total, self.warmup, self.kind = optimizer, first_step, total, warmup, kind

    def __call__(self) -> None:
        apply_lr(self.optimizer, lr_factor(self.step, self.total, self.warmup, self.kind))
        self.step += 1
