"""One run from config to run folder: set up, restore, train each phase epoch by epoch, finish.

`train(config)` is the Python API behind `thawline train`; `compare` and `sweep` call it once per strategy with
the same prepared data, so images are decoded once for all of them. The loop itself is `engine.train_one_epoch`
and `engine.evaluate`; this module decides what runs when and what is written where:

    train() -> set up (prepare.setup_run) -> open the run folder -> restore -> for each phase: for each epoch:
               train, validate, one row to every sink (metrics.jsonl, tracker, console, on_epoch), checkpoints
            -> finish (best weights on test, predictions.csv, summary.json)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from thawline.core import faults
from thawline.core.atomic import write_text_atomic
from thawline.core.config import TrainConfig, save_yaml
from thawline.core.errors import ThawlineError
from thawline.core.runformat import (
    BEST_CKPT,
    CONFIG,
    CONFIG_FILE,
    EPOCH,
    LAST_CKPT,
    METRICS_FILE,
    PREDICTIONS,
    PROBABILITIES,
    SUMMARY,
    SUMMARY_FILE,
    VAL_PREDICTIONS,
)
from thawline.data import fingerprint
from thawline.models.stages import apply_freezing
from thawline.report.metrics import read_predictions, write_predictions
from thawline.report.plots_predictions import GRID_NAME, plot_prediction_grid
from thawline.report.probabilities import write_probabilities
from thawline.training import distributed, engine, runtime
from thawline.training.checkpoint import link_checkpoint, load_checkpoint, save_checkpoint
from thawline.training.lrfind import LRFindResult, lr_find, resolve_auto_lr, write_lr_find
from thawline.training.prepare import PreparedData, RunSetup, prepare_data, seed_everything, setup_run
from thawline.training.rows import _epoch_line, _epoch_row, _summary
from thawline.training.run_state import LoopState, Run, RunResult
from thawline.training.runfolder import (
    RUNS_PARENT,
    RunInterrupted,
    append_jsonl,
    check_clearable,
    check_fresh_folder,
    check_same_folder,
    claim_folder,
    folder_identity,
    is_same_folder,
    next_run_dir,
    resume_state,
    truncate_metrics,
    write_skipped,
)
from thawline.training.solved_head import solvable_head, solved_candidate, validate
from thawline.training.sources import PhaseSource, eval_batches, passes_per_epoch, phase_source
from thawline.training.strategies import ResolvedPhase, Strategy, check_budget, get_strategy
from thawline.training.tracking import SCALARS, Tracker, wandb_module

EpochSink = Callable[[dict[str, Any], ResolvedPhase], None]


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, flush=True)


def train(
    config: TrainConfig,
    *,
    data: PreparedData | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    quiet: bool = False,
    strategy: Strategy | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop_after_epoch: int | None = None,
    overwrite: bool = False,
    final_epoch: int | None = None,
) -> RunResult:
    """Train one strategy and write its run folder (config.yaml, metrics.jsonl, best/last.pt, summary.json).

    `stop_after_epoch`: pause once that global epoch is checkpointed (no summary yet: `RunResult.summary` is None);
    `resume=True` later continues exactly as if it had not stopped (successive halving uses this). A fresh run into
    a folder that holds a run is refused unless `overwrite`; the folder is locked while this process writes it.

    `final_epoch`: the run ends (test, summary) after that global epoch with the weights it has there, the learning
    rate scheduled for the whole budget as in the runs it stands for: `compare --refit`, whose data has no val split
    to pick an epoch by (data without "val" needs it)."""
    started = time.perf_counter()
    runtime.keep_freed_memory()  # large activations reused instead of page-faulted every step (~1.8x on CPU)
    distributed.init(config.device)
    quiet = quiet or not distributed.is_main()
    strategy = strategy or get_strategy(config.strategy, config.strategies_file)
    if config.wandb:
        wandb_module()  # fail before any work when --wandb cannot be honoured
    check_budget(strategy, config.epochs)  # before the data is read: a wrong --epochs costs no decoding
    folder = run_dir or config.out
    if resume and not folder:
        raise ThawlineError("resuming needs the run folder: pass run_dir (CLI: --resume RUN_DIR)")
    if not resume and not overwrite and folder:
        check_fresh_folder(Path(folder))  # before any work: a new run never overwrites another's files
    elif not resume and folder:
        check_clearable(Path(folder))  # before any work: --overwrite never empties a folder thawline did not make
    seed_everything(config.seed)
    if data is None:
        data = prepare_data(config, quiet)
    if "val" not in data.splits and final_epoch is None:
        raise ThawlineError("a run without a val split needs the epoch to end at (final_epoch): nothing picks one")
    lr_auto, lr_found = config.lr == "auto", None
    if lr_auto:
        # Under DDP every rank runs the range test on its shard (its caches are shared); rank 0's pick is used.
        resume_dir = (run_dir or config.out) if resume else None
        config, lr_found = resolve_auto_lr(config, data=data, strategy=strategy, resume_dir=resume_dir, quiet=quiet)
        config = distributed.broadcast_object(config)
    setup = setup_run(config, strategy, data)
    main = distributed.is_main()
    out = Path(distributed.broadcast_object(str(folder or next_run_dir(RUNS_PARENT, strategy.name, create=main))))
    with claim_folder(out, resume=resume, overwrite=overwrite, main=main, kind="run"):  # locked until it returns
        saved = resume_state(out, setup.resolved_config(lr_auto)) if resume else None  # same options, or refused
        if saved is not None:  # and the same files (data.csv), or refused: epochs on two data sets are no one run
            fingerprint.check_same_data(out, data.fingerprint)
        distributed.barrier()  # every rank has read last.pt before rank 0 writes anything new
        run = _open_run(setup, out, saved is not None, lr_auto, lr_found, quiet)
        try:
            loop = _restore(run, saved)
            if stop_after_epoch is not None and stop_after_epoch <= loop.done_epochs < setup.total_epochs:
                raise _Paused  # checkpointed there already: a retried request whose worker died after its pause
            sinks = _epoch_sinks(run, on_epoch)
            try:
                for phase in setup.phases:
                    _train_phase(run, loop, phase, sinks, stop_after_epoch, final_epoch)
            except _Final:
                pass
            summary = _finish(run, loop, started)
        except _Paused:
            return RunResult(out, None, loop.metrics)
        except KeyboardInterrupt as e:  # Ctrl-C: say which folder to resume (config.yaml is there by now)
            if isinstance(e, RunInterrupted):
                raise
            raise RunInterrupted(out, "train") from None
        finally:
            # also when a pruned sweep trial or Ctrl-C stops the run; nothing into a folder that replaced ours
            run.tracker.close(discard=run.main and not is_same_folder(run.out, run.folder_id))
            runtime.release_freed_memory()  # the kept free heap goes back: the next run (compare, sweep) starts fresh
    return RunResult(out, summary, loop.metrics)


# ---- set-up and restore ---------------------------------------------------------------------------------------


def _open_run(
    setup: RunSetup, out: Path, resuming: bool, lr_auto: bool, lr_found: LRFindResult | None, quiet: bool
) -> Run:
    """Write the run folder's fixed files (config.yaml once, complete) and open the tracker."""
    resolved = setup.resolved_config(lr_auto)
    if distributed.is_main():
        if not resuming and (out / METRICS_FILE).exists():
            # A fresh run in an old folder, or a resume killed before its first checkpoint: start a fresh log.
            (out / METRICS_FILE).unlink()
        if lr_found is not None:
            write_lr_find(out, lr_found)
        save_yaml(out / CONFIG_FILE, resolved)
        write_skipped(out, setup.data.skipped)
        if not resuming:  # a resume keeps the list it was checked against (none in a folder older than data.csv)
            fingerprint.write(out, setup.data.fingerprint)
    tracker = Tracker(out, out.name, resolved, setup.config.wandb, enabled=distributed.is_main())
    initial = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    run = Run(setup, out, resolved, tracker, runtime.MemoryMeter(setup.device), initial, quiet)
    run.folder_id = folder_identity(out) if run.main else None
    return run


def _restore(run: Run, saved: dict[str, Any] | None) -> LoopState:
    """The loop state of a fresh run, or the one last.pt holds (model, optimizer and its param groups, best)."""
    loop = LoopState()
    if saved is None:
        return loop
    setup = run.setup
    setup.model.load_state_dict(saved["model"])
    groups = saved["optimizer"]["param_groups"]  # their parameter names: phases may train parts of stages
    loop.optimizer = engine.rebuild_optimizer(setup.model, setup.smap, setup.config, saved["group_stages"], groups)
    loop.optimizer.load_state_dict(saved["optimizer"])
    loop.best_acc, loop.best_epoch = saved["best_val_acc"], saved["best_epoch"]
    loop.done_epochs = saved["global_epoch"]
    loop.metrics = truncate_metrics(run.out / METRICS_FILE, loop.done_epochs)
    if (run.out / BEST_CKPT).exists():
        loop.best_state = load_checkpoint(run.out / BEST_CKPT)["model"]
    log(f"[{run.name}] resuming after epoch {loop.done_epochs}", run.quiet)
    return loop


def _epoch_sinks(run: Run, on_epoch: Callable[[dict[str, Any]], None] | None) -> list[EpochSink]:
    """Where each epoch's row goes, in order: metrics.jsonl, the caller's hook, TensorBoard/W&B, the console."""
    sinks: list[EpochSink] = []
    if run.main:
        sinks.append(lambda row, phase: check_same_folder(run.out, run.folder_id))  # before the epoch writes anything
        sinks.append(lambda row, phase: append_jsonl(run.out / METRICS_FILE, row))
    if on_epoch is not None:
        sinks.append(lambda row, phase: on_epoch(row))
    sinks.append(lambda row, phase: run.tracker.scalars({k: row[k] for k in SCALARS}, row[EPOCH.epoch]))
    total = run.setup.config.epochs or run.setup.total_epochs
    sinks.append(lambda row, phase: log(_epoch_line(row, phase, len(run.setup.phases), total), run.quiet))
    return sinks


# ---- phases and epochs ----------------------------------------------------------------------------------------


def _phase_auto_lr(run: Run, phase: ResolvedPhase) -> float:
    """`--lr auto` for a later phase: the range test on a copy of the weights this phase starts from, with this
    phase's trainable set (a thawed body wants another LR than the head had). Recorded as
    lr_find-phase<N>.json/.png; a resumed run reads its LR back, so it keeps the schedule it started."""
    setup = run.setup
    path = run.out / f"lr_find-phase{phase.index + 1}.json"
    lr = None
    if path.is_file():
        try:
            lr = float(json.loads(path.read_text(encoding="utf-8"))["suggested_lr"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ThawlineError(f"'{path}' is unreadable; delete it to rerun the phase's LR range test") from None
    if lr is None:
        state = {k: v.detach().clone() for k, v in setup.model.state_dict().items()}
        found = lr_find(setup.config, data=setup.data, strategy=setup.strategy, phase_index=phase.index,
                        model_state=state, quiet=True)  # fmt: skip
        if distributed.is_main():
            write_lr_find(run.out, found, stem=path.stem)
        lr = found.suggested_lr
    lr = float(distributed.broadcast_object(lr))
    log(f"[{run.name}] phase {phase.index + 1} --lr auto: {lr:.2e} (LR range test from this phase's start)", run.quiet)
    return lr


class _Paused(Exception):
    """The run reached its `stop_after_epoch` and is checkpointed there."""


class _Final(Exception):
    """The run reached its `final_epoch`: it ends there."""


def _train_phase(
    run: Run,
    loop: LoopState,
    phase: ResolvedPhase,
    sinks: list[EpochSink],
    stop_after_epoch: int | None = None,
    final_epoch: int | None = None,
) -> None:
    setup = run.setup
    n_trainable = apply_freezing(setup.model, setup.smap, set(phase.trainable), phase.bn, phase.kinds)
    loop.trainable_per_phase.append(n_trainable)
    if loop.global_epoch + phase.epochs <= loop.done_epochs:  # finished before the resume point
        loop.global_epoch += phase.epochs
        return
    if final_epoch is not None and max(loop.global_epoch, loop.done_epochs) >= final_epoch:
        raise _Final  # also a resume after the final epoch's checkpoint: no epoch past it
    lr_scale = setup.lr_scale
    if run.resolved_config.get(CONFIG.lr_auto) and phase.index > 0:
        lr_scale = _phase_auto_lr(run, phase) / phase.lr
    loop.optimizer = engine.enter_phase(loop.optimizer, setup.model, setup.smap, phase, setup.config, lr_scale)
    source = phase_source(setup, phase, run.name, run.quiet)
    faults.after("phase", phase.index + 1)
    try:
        train_forward = distributed.wrap(source.forward, setup.model, setup.device)  # DDP over this phase's trainables
        steps_per_pass = len(source.train_batches(0, 0))
        passes = passes_per_epoch(setup, phase, steps_per_pass)
        steps_per_epoch = steps_per_pass * passes
        head = solvable_head(setup, phase, source)
        for epoch_in_phase in range(phase.epochs):
            if loop.global_epoch < loop.done_epochs:
                loop.global_epoch += 1
                continue
            schedule = engine.PhaseSchedule(
                loop.optimizer, epoch_in_phase * steps_per_epoch, steps_per_epoch * phase.epochs,
                int(round(setup.config.warmup_epochs * steps_per_epoch)), setup.config.schedule,
            )  # fmt: skip
            stats, val = _train_epoch(run, loop, phase, source, train_forward, schedule, passes)
            head_fit: dict[str, Any] = {}
            # the solved head at the phase's end, or at the run's when it ends earlier (a refit)
            if head is not None and (epoch_in_phase + 1 == phase.epochs or loop.global_epoch + 1 == final_epoch):
                head_fit, val = solved_candidate(run, loop, source, head, val)  # val: the head kept
            if epoch_in_phase + 1 < phase.epochs:
                source.complete()  # the views the first epoch did not draw: the next epochs read only
            loop.global_epoch += 1
            row = _epoch_row(run, loop, phase, source, epoch_in_phase, stats, val, n_trainable)
            row[EPOCH.passes] = passes  # > 1 when small data needed more steps than one pass gives (min_steps)
            if head_fit:
                row[EPOCH.head_fit] = head_fit
            source.flush()  # the features this checkpoint relies on are durable before it is written
            loop.metrics.append(row)
            for sink in sinks:
                sink(row, phase)
            _checkpoint(run, loop, phase, val.acc if val else None, best=head_fit.get("kept", False))
            if loop.best_epoch == loop.global_epoch:  # reused by _finish (the same logits, bit for bit)
                loop.best_eval = val if not (source.cached or head_fit) else None
            if loop.global_epoch == final_epoch:
                raise _Final
            if loop.global_epoch == stop_after_epoch and loop.global_epoch < setup.total_epochs:
                raise _Paused
    finally:
        source.close()
        runtime.release_freed_memory()  # the next phase (or the final evaluation) has another working set
    if setup.config.test_each_phase and "test" in setup.data.splits:
        loop.phase_test[phase.index] = _evaluate_split(run, "test").acc


def _train_epoch(
    run: Run,
    loop: LoopState,
    phase: ResolvedPhase,
    source: PhaseSource,
    train_forward: engine.Forward,
    schedule: engine.PhaseSchedule,
    passes: int,
) -> tuple[engine.EpochStats, engine.EvalResult | None]:
    setup = run.setup
    torch.manual_seed(setup.config.seed * 100_003 + loop.global_epoch)  # dropout etc.: a pure function of the epoch
    bar = tqdm(
        total=source.n_train * passes // distributed.world_size(),
        desc=f"{run.name} p{phase.index + 1} e{loop.global_epoch + 1}",
        unit="img",
        disable=run.quiet or not sys.stderr.isatty(),
        leave=False,
    )

    def on_batch(n: int, loss: torch.Tensor) -> None:
        if not bar.disable:  # reading the loss waits for the step: only for a visible bar
            bar.update(n)
            bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        run.meter.sample()
        faults.tick("batch")

    assert loop.optimizer is not None
    try:
        stats = engine.train_one_epoch(
            train_forward, source.epoch_batches(loop.global_epoch, passes), loop.optimizer, setup.loss_fn, schedule,
            setup.device, setup.amp, progress=on_batch, dropout=source.dropout, across_ranks=run.across,
        )  # fmt: skip
    except engine.NonFiniteLoss as e:
        raise ThawlineError(
            f"loss became {e.value} in strategy '{run.name}' phase {phase.index + 1}; lower the "
            f"learning rate (--lr) and rerun; {run.out / 'last.pt'} keeps the last good epoch"
        ) from None
    finally:
        bar.close()
    return stats, validate(run, source)


def _checkpoint(run: Run, loop: LoopState, phase: ResolvedPhase, val_acc: float | None, best: bool = False) -> None:
    """best.pt when validation improved (or `best`: a solved head that tied; or every epoch without a val split, so
    best.pt holds the latest weights), then last.pt: everything an exact resume needs. Weights that are no longer
    finite (a blown-up epoch) are never saved: the run stops and last.pt keeps the epoch before."""
    model = run.setup.model
    val_loss = loop.metrics[-1].get(EPOCH.val_loss) if loop.metrics else None
    bad = f"validation loss {val_loss}" if val_loss is not None and not math.isfinite(val_loss) else None
    bad = bad or next(
        (f"weights ('{k}')" for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()),
        None,
    )
    if bad is not None:
        kept = loop.global_epoch - 1
        where = f"{run.out / 'last.pt'} keeps epoch {kept}" if kept > 0 else "no checkpoint was written"
        raise ThawlineError(
            f"epoch {loop.global_epoch} of strategy '{run.name}' ended with non-finite {bad}, so it was not saved; "
            f"{where}; lower the learning rate (--lr) and rerun into a new --out"
        )
    improved = best or val_acc is None or val_acc > loop.best_acc
    if improved:
        loop.best_acc, loop.best_epoch = val_acc if val_acc is not None else loop.best_acc, loop.global_epoch
        loop.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if not run.main:
        return
    check_same_folder(run.out, run.folder_id)  # also when the caller's hook ran after the epoch's first check
    assert loop.optimizer is not None
    state = {
        "model": model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "group_stages": [g["stage"] for g in loop.optimizer.param_groups],
        "global_epoch": loop.global_epoch,
        "phase": phase.index,
        # exact, not rounded: a resumed run compares later epochs against it as the uninterrupted run does
        # (a rounded 0.958333 < 0.9583333 made a tie look like an improvement and moved the best epoch)
        "best_val_acc": loop.best_acc,
        "best_epoch": loop.best_epoch,
        "config": run.resolved_config,
        "torch_rng": torch.get_rng_state(),
    }
    if improved:  # best.pt first: a crash before last.pt leaves a resume at the older epoch, never a stale best
        save_checkpoint(run.out / BEST_CKPT, state)
        faults.after("best", loop.global_epoch)
        link_checkpoint(run.out / BEST_CKPT, run.out / LAST_CKPT)  # the same state: ~0.2 s saved per epoch
    else:
        save_checkpoint(run.out / LAST_CKPT, state)
    faults.after("checkpoint", loop.global_epoch)


# ---- finish -----------------------------------------------------------------------------------------------------


def _evaluate_split(run: Run, split_name: str) -> engine.EvalResult:
    """The model as it is now on a whole split of full images (gathered over ranks under DDP)."""
    setup = run.setup
    batches = eval_batches(setup.data.splits[split_name], setup.eval_batch_size, setup.normalize)
    return engine.evaluate(setup.model, batches, setup.device, setup.amp, model=setup.model, across_ranks=run.across)


def _finish(run: Run, loop: LoopState, started: float) -> dict[str, Any]:
    """Test and val predictions of the best epoch's weights on full images (predictions.csv: test, else val), then
    summary.json. A refit has no val split; without test either, it has nothing to predict."""
    setup = run.setup
    if loop.best_state is not None:
        setup.model.load_state_dict(loop.best_state)
    setup.model.eval()
    splits = setup.data.splits
    runtime.release_freed_memory()  # full-image evaluation: another working set than the epochs' (peak RSS)
    test = _evaluate_split(run, "test") if "test" in splits else None
    # The val split's per-image predictions too (predictions_val.csv) when predictions.csv holds test: the val
    # interval and paired tests of `thawline.report.uncertainty` need them. Every rank evaluates (a gather under DDP).
    # The best epoch's val evaluation, when it ran the model on full images, is this one: not run a second time
    # (lite0 at 128 px on 2 CPU cores: ~15% of a 2-epoch run's wall time).
    val = None
    if "val" in splits:
        val = loop.best_eval if loop.best_eval is not None else _evaluate_split(run, "val")
    eval_split = "test" if test is not None else "val" if val is not None else None
    if run.main:
        results = {"val": val, "test": test}
        if eval_split is not None:
            shown = results[eval_split]
            assert shown is not None
            write_predictions(
                run.out / PREDICTIONS, eval_split, splits[eval_split].paths, shown.labels.numpy(),
                shown.logits.numpy(), setup.data.classes,
            )  # fmt: skip
        if test is not None and val is not None:
            write_predictions(
                run.out / VAL_PREDICTIONS, "val", splits["val"].paths, val.labels.numpy(), val.logits.numpy(),
                setup.data.classes,
            )  # fmt: skip
        probs = {name: (splits[name].paths, r.labels.numpy(), r.logits.numpy()) for name, r in results.items() if r}
        if probs:
            write_probabilities(run.out / PROBABILITIES, probs)  # out-of-fold predictions, ensembles
    summary = _summary(run, loop, val, test, eval_split, started)
    if run.main:
        write_text_atomic(run.out / SUMMARY_FILE, json.dumps(summary, indent=2))
        if summary[SUMMARY.test_acc] is not None:
            run.tracker.scalars({SUMMARY.test_acc: summary[SUMMARY.test_acc]}, loop.global_epoch)
        if eval_split is not None:
            _log_prediction_grid(run, loop.global_epoch)
    return summary


def _log_prediction_grid(run: Run, step: int) -> None:
    """prediction_grid.png in the run folder (the report reuses it) and as an image in TensorBoard / W&B."""
    grid = run.out / GRID_NAME
    shown, _ = plot_prediction_grid(read_predictions(run.out / PREDICTIONS, run.setup.data.classes), grid)
    if shown:
        run.tracker.image("prediction_grid", grid, step)
