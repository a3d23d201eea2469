"""Validation, and the solved head: head-only's second candidate to its stepped head (`models/headfit.py`), kept
when it validates at least as well. Called by the trainer's phase loop."""

from __future__ import annotations

import time
from typing import Any

import torch

from thawline.models import headfit
from thawline.models.stages import split_at
from thawline.training import distributed, engine
from thawline.training.prepare import RunSetup
from thawline.training.run_state import LoopState, Run
from thawline.training.sources import PhaseSource
from thawline.training.strategies import ResolvedPhase


def validate(run: Run, source: PhaseSource) -> engine.EvalResult | None:
    """The model on the val split (None without one: a refit)."""
    setup = run.setup
    if source.val_batches is None:
        return None
    return engine.evaluate(
        source.eval_forward, source.val_batches(), setup.device, setup.amp, model=setup.model, across_ranks=run.across
    )


def solvable_head(setup: RunSetup, phase: ResolvedPhase, source: PhaseSource) -> torch.nn.Linear | None:
    """The linear head that this phase trains alone, to the end of the run: it also gets a
    solved candidate (headfit.py). Not before a thaw: a solved head there cost gradual 4 to 23 points of test
    accuracy on 3 of 4 suite tasks (orientation 95.3% -> 72.3%), and stepping on from one lost up to 13 points."""
    head_stage = setup.smap.head
    head_to_the_end = all(tuple(p.trainable) == (head_stage,) for p in setup.phases[phase.index :])
    if not (setup.config.head_solver and head_to_the_end and source.train_features):
        return None
    split = split_at(setup.model, setup.smap, head_stage)  # the classifier over pooled features, with or without cache
    head = split.suffix if split is not None else None
    return head if isinstance(head, torch.nn.Linear) else None


def solved_candidate(
    run: Run, loop: LoopState, source: PhaseSource, head: torch.nn.Linear, stepped: engine.EvalResult | None
) -> tuple[dict[str, Any], engine.EvalResult | None]:
    """After the stepped epochs of a head-to-the-end phase: the head solved on the same features (L2 chosen by
    cross-validation on train) replaces the stepped one when its val accuracy is at least the best epoch's. Ties
    go to the solved head: its val accuracy is one measurement, the stepped one the best of several epochs. Without a
    val split (a refit) the solved head is kept: its L2 penalty is itself chosen by cross-validation.
    On the task suite the stepped head beat a logistic-regression probe by up to 7 points and fell 6 below it on
    others; keeping the better on val stayed within 0.5 points of the probe on 12 of 13 tasks (-0.6 on the 13th).
    Returns what the metrics row records and the validation of the head kept (its time counts as the epoch's)."""
    setup = run.setup
    assert source.train_features is not None
    t0 = time.perf_counter()
    stepped_head = (head.weight.detach().clone(), head.bias.detach().clone())
    x, y = source.train_features()
    weight = setup.class_weights.to(x.device) if setup.class_weights is not None else None
    fit = headfit.fit_head(head, x, y, len(setup.data.classes), class_weight=weight, seed=setup.config.seed)
    if distributed.active():  # every rank solved the same problem; rank 0's bits are the run's
        set_head(head, *distributed.broadcast_object((head.weight.detach().cpu(), head.bias.detach().cpu())))
    solved = validate(run, source)
    kept = solved is None or stepped is None or solved.acc >= max(loop.best_acc, stepped.acc)
    if not kept:
        set_head(head, *stepped_head)
    source.setup_seconds += time.perf_counter() - t0
    row = {**fit.as_row(), "val_acc": round(solved.acc, 6) if solved else None,
           "stepped_val_acc": round(stepped.acc, 6) if stepped else None, "kept": kept}  # fmt: skip
    return row, solved if kept else stepped


@torch.no_grad()
def set_head(head: torch.nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    head.weight.copy_(weight)
    head.bias.copy_(bias)
