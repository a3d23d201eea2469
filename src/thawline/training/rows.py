"""What a run writes about itself: the per-epoch row (metrics.jsonl), summary.json, the per-phase results and the
console lines."""

from __future__ import annotations

import time
from typing import Any

from thawline.models.stages import count_params, stage_drift
from thawline.report.uncertainty import bootstrap_interval
from thawline.training import engine
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
    val: engine.EvalResult,
    n_trainable: int,
) -> dict[str, Any]:
    """One line of metrics.jsonl (the keys the tracker, the console and the report read)."""
    seconds = stats.seconds + source.take_setup_seconds()
    groups = loop.optimizer.param_groups if loop.optimizer else []
    return {
        "strategy": run.name,
        "phase": phase.index + 1,
        "phase_train": phase.train,
        "epoch": loop.global_epoch,
        "epoch_in_phase": epoch_in_phase + 1,
        "train_loss": round(stats.loss, 6),
        "train_acc": round(stats.acc, 6),
        "val_loss": round(val.loss, 6),
        "val_acc": round(val.acc, 6),
        "lr": groups[-1]["lr"] if groups else 0.0,
        "seconds": round(seconds, 3),
        "images_per_s": round(stats.images / seconds, 2) if seconds > 0 else None,
        "trainable_params": n_trainable,
        "feature_cache": source.cached,
        "rss_mb": round(run.meter.peak_rss_mb, 1),
    }


def _interval(result: engine.EvalResult) -> list[float] | None:
    """95% percentile bootstrap interval [lo, hi] of the accuracy of `result`."""
    return bootstrap_interval((result.logits.argmax(dim=1) == result.labels).numpy())


def _summary(
    run: Run,
    loop: LoopState,
    val: engine.EvalResult,
    test: engine.EvalResult | None,
    eval_split: str,
    started: float,
) -> dict[str, Any]:
    setup, metrics = run.setup, loop.metrics
    train_seconds = sum(r["seconds"] for r in metrics)
    train_images = sum(r["images_per_s"] * r["seconds"] for r in metrics if r["images_per_s"])
    return {
        "strategy": run.name,
        "model": setup.config.model,
        "weights": setup.weights_info.get("source"),
        "classes": setup.data.classes,
        "best_val_acc": round(loop.best_acc, 6),
        "best_epoch": loop.best_epoch,
        "test_acc": round(test.acc, 6) if test else None,
        "test_loss": round(test.loss, 6) if test else None,
        "epochs": setup.total_epochs,
        "phases": [p.to_dict() for p in setup.phases],
        "trainable_params": loop.trainable_per_phase,
        "phase_results": _phase_results(setup.phases, metrics, loop.phase_test),
        "total_params": count_params(setup.model),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_time_s": round(train_seconds, 2),
        "images_per_s": round(train_images / train_seconds, 2) if train_seconds > 0 else None,
        "peak_rss_mb": round(run.meter.peak_rss_mb, 1),
        "peak_gpu_mb": run.meter.peak_gpu_mb,
        "layer_drift": stage_drift(setup.model, run.initial, setup.smap),
        **setup.data.counts(),
        "data_digest": setup.data.fingerprint.digests(),  # per split: which files the accuracies are on (data.csv)
        "skipped_files": len(setup.data.skipped),
        "img_size": setup.data.img_size,
        "device": str(setup.device),
        "predictions_split": eval_split,
        "val_acc_ci": _interval(val),
        "test_acc_ci": _interval(test) if test else None,
    }


def _phase_results(
    phases: list[ResolvedPhase], metrics: list[dict[str, Any]], phase_test: dict[int, float]
) -> list[dict[str, Any]]:
    """Per phase: best and last val accuracy, and test accuracy at the phase's end when measured."""
    out = []
    for phase in phases:
        rows = [r for r in metrics if r["phase"] == phase.index + 1]
        out.append(
            {
                "phase": phase.index + 1,
                "train": phase.train,
                "epochs": phase.epochs,
                "best_val_acc": max((r["val_acc"] for r in rows), default=None),
                "last_val_acc": rows[-1]["val_acc"] if rows else None,
                "test_acc_at_end": round(phase_test[phase.index], 6) if phase.index in phase_test else None,
            }
        )
    return out


def _epoch_line(row: dict[str, Any], phase: ResolvedPhase, n_phases: int, total_epochs: int) -> str:
    cached = " cached" if row["feature_cache"] else ""
    ips = f"{row['images_per_s']:.0f}" if row["images_per_s"] else "-"
    return (
        f"[{row['strategy']}] phase {row['phase']}/{n_phases} ({phase.train}{cached}) "
        f"epoch {row['epoch']}/{total_epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}  lr {row['lr']:.2e}  "
        f"{row['seconds']:.1f}s  {ips} img/s"
    ) + _head_fit_note(row.get("head_fit"))


def _head_fit_note(fit: dict[str, Any] | None) -> str:
    if not fit:
        return ""
    which = "kept" if fit["kept"] else f"not kept (stepped head: val {fit['stepped_val_acc']:.2%})"
    return f"  | solved head (C={fit['C']:g}, {fit['cv_folds']}-fold CV) val {fit['val_acc']:.2%}: {which}"
