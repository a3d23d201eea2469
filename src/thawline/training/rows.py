"""What a run writes about itself: the per-epoch row (metrics.jsonl), summary.json, the per-phase results and the
console lines."""

from __future__ import annotations

import time
from typing import Any

import torch

from thawline.core.runformat import EPOCH, PHASE_RESULT, SUMMARY
from thawline.models.stages import count_params, stage_drift
from thawline.report.uncertainty import bootstrap_interval
from thawline.training import engine, runtime
from thawline.training.run_state import LoopState, Run
from thawline.training.sources import PhaseSource
from thawline.training.strategies import ResolvedPhase


def _epoch_row(
    run: Run,
    loop: LoopState,
    phase: ResolvedPhase,
    source: PhaseSource,
    epoch_in_phase: int,
    stats: engine.EpochStats,
    val: engine.EvalResult | None,
    n_trainable: int,
) -> dict[str, Any]:
    """One line of metrics.jsonl (the keys the tracker, the console and the report read)."""
    seconds = stats.seconds + source.take_setup_seconds()
    groups = loop.optimizer.param_groups if loop.optimizer else []
    return {
        EPOCH.strategy: run.name,
        EPOCH.phase: phase.index + 1,
        EPOCH.phase_train: phase.train,
        EPOCH.epoch: loop.global_epoch,
        EPOCH.epoch_in_phase: epoch_in_phase + 1,
        EPOCH.train_loss: round(stats.loss, 6),
        EPOCH.train_acc: round(stats.acc, 6),
        EPOCH.val_loss: round(val.loss, 6) if val else None,  # None: no val split (a refit)
        EPOCH.val_acc: round(val.acc, 6) if val else None,
        EPOCH.lr: groups[-1]["lr"] if groups else 0.0,
        EPOCH.seconds: round(seconds, 3),
        EPOCH.images_per_s: round(stats.images / seconds, 2) if seconds > 0 else None,
        EPOCH.trainable_params: n_trainable,
        EPOCH.feature_cache: source.cached,
        EPOCH.rss_mb: round(run.meter.peak_rss_mb, 1),
    }


def _interval(result: engine.EvalResult) -> list[float] | None:
    """95% percentile bootstrap interval [lo, hi] of the accuracy of `result`."""
    return bootstrap_interval((result.logits.argmax(dim=1) == result.labels).numpy())


def _summary(
    run: Run,
    loop: LoopState,
    val: engine.EvalResult | None,
    test: engine.EvalResult | None,
    eval_split: str | None,
    started: float,
) -> dict[str, Any]:
    setup, metrics = run.setup, loop.metrics
    train_seconds = sum(r[EPOCH.seconds] for r in metrics)
    train_images = sum(r[EPOCH.images_per_s] * r[EPOCH.seconds] for r in metrics if r[EPOCH.images_per_s])
    return {
        SUMMARY.strategy: run.name,
        SUMMARY.model: setup.config.model,
        SUMMARY.weights: setup.weights_info.get("source"),
        SUMMARY.classes: setup.data.classes,
        SUMMARY.best_val_acc: round(loop.best_acc, 6) if val else None,
        SUMMARY.best_epoch: loop.best_epoch,
        SUMMARY.test_acc: round(test.acc, 6) if test else None,
        SUMMARY.test_loss: round(test.loss, 6) if test else None,
        SUMMARY.epochs: setup.total_epochs,
        SUMMARY.phases: [p.to_dict() for p in setup.phases],
        SUMMARY.trainable_params: loop.trainable_per_phase,
        SUMMARY.phase_results: _phase_results(setup.phases, metrics, loop.phase_test),
        SUMMARY.total_params: count_params(setup.model),
        SUMMARY.wall_time_s: round(time.perf_counter() - started, 2),
        SUMMARY.train_time_s: round(train_seconds, 2),
        SUMMARY.images_per_s: round(train_images / train_seconds, 2) if train_seconds > 0 else None,
        SUMMARY.peak_rss_mb: round(run.meter.peak_rss_mb, 1),
        SUMMARY.peak_gpu_mb: run.meter.peak_gpu_mb,
        SUMMARY.cpu_threads: torch.get_num_threads(),
        SUMMARY.omp_wait: runtime.omp_wait(),
        SUMMARY.layer_drift: stage_drift(setup.model, run.initial, setup.smap),
        **setup.data.counts(),
        SUMMARY.data_digest: setup.data.fingerprint.digests(),  # per split: which files the accuracies are on
        SUMMARY.skipped_files: len(setup.data.skipped),
        SUMMARY.img_size: setup.data.img_size,
        SUMMARY.device: str(setup.device),
        SUMMARY.predictions_split: eval_split,
        SUMMARY.val_acc_ci: _interval(val) if val else None,
        SUMMARY.test_acc_ci: _interval(test) if test else None,
    }


def _phase_results(
    phases: list[ResolvedPhase], metrics: list[dict[str, Any]], phase_test: dict[int, float]
) -> list[dict[str, Any]]:
    """Per phase: best and last val accuracy, and test accuracy at the phase's end when measured."""
    out = []
    for phase in phases:
        rows = [r for r in metrics if r[EPOCH.phase] == phase.index + 1]
        accs = [r[EPOCH.val_acc] for r in rows if r[EPOCH.val_acc] is not None]
        out.append(
            {
                PHASE_RESULT.phase: phase.index + 1,
                PHASE_RESULT.train: phase.train,
                PHASE_RESULT.epochs: phase.epochs,
                PHASE_RESULT.best_val_acc: max(accs, default=None),
                PHASE_RESULT.last_val_acc: rows[-1][EPOCH.val_acc] if rows else None,
                PHASE_RESULT.test_acc_at_end: round(phase_test[phase.index], 6) if phase.index in phase_test else None,
            }
        )
    return out


def _epoch_line(row: dict[str, Any], phase: ResolvedPhase, n_phases: int, total_epochs: int) -> str:
    cached = " cached" if row[EPOCH.feature_cache] else ""
    ips = f"{row[EPOCH.images_per_s]:.0f}" if row[EPOCH.images_per_s] else "-"
    val = "val -" if row[EPOCH.val_acc] is None else f"val loss {row[EPOCH.val_loss]:.4f} acc {row[EPOCH.val_acc]:.2%}"
    return (
        f"[{row[EPOCH.strategy]}] phase {row[EPOCH.phase]}/{n_phases} ({phase.train}{cached}) "
        f"epoch {row[EPOCH.epoch]}/{total_epochs}  "
        f"train loss {row[EPOCH.train_loss]:.4f} acc {row[EPOCH.train_acc]:.2%}  "
        f"{val}  lr {row[EPOCH.lr]:.2e}  "
        f"{row[EPOCH.seconds]:.1f}s  {ips} img/s"
    ) + _head_fit_note(row.get(EPOCH.head_fit))


def _head_fit_note(fit: dict[str, Any] | None) -> str:
    if not fit:
        return ""
    which = "kept" if fit["kept"] else f"not kept (stepped head: val {fit['stepped_val_acc']:.2%})"
    val = "no val split" if fit["val_acc"] is None else f"val {fit['val_acc']:.2%}"
    return f"  | solved head (C={fit['C']:g}, {fit['cv_folds']}-fold CV) {val}: {which}"
