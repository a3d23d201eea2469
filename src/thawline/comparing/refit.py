"""`compare --folds K --refit`: the answer's best single strategy trained once more, on train and val pooled, for
users who cannot pay an ensemble's inference cost (K forward passes per image and strategy).

With no val split left to pick an epoch by, the refit ends at the mean of its fold runs' best epochs (rounded half
up), its learning rate scheduled for the whole budget as in those fold runs; so it stands for what the folds
measured, trained on 1/(K-1) more images. Its folder, OUT/<strategy>/refit, is an ordinary run folder (exact resume,
the lock; `thawline predict`, `evaluate` and `export` accept it). Its test accuracy, when there is a test split, is
measured once at the end like the answer's and never chooses anything."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from thawline.comparing.executor import finished_run
from thawline.core.config import TrainConfig, replace
from thawline.core.runformat import LAST_CKPT, REFIT_DIR, SUMMARY
from thawline.data.names import folder_name
from thawline.training.prepare import PreparedData
from thawline.training.run_state import RunResult
from thawline.training.strategies import get_strategy
from thawline.training.trainer import train


def refit_epoch(fold_runs: list[RunResult]) -> int:
    """The mean of the fold runs' best epochs, rounded half up (at least 1)."""
    epochs = [int((r.summary or {})[SUMMARY.best_epoch]) for r in fold_runs]
    return max(1, math.floor(sum(epochs) / len(epochs) + 0.5))


def refit(
    config: TrainConfig, strategy: str, fold_runs: list[RunResult], pool: PreparedData, out_dir: Path, *,
    resume: bool, quiet: bool,
) -> dict[str, Any]:  # fmt: skip
    """Train `strategy` on `pool` (train and val pooled, no val split) to `refit_epoch(fold_runs)` into
    OUT/<strategy>/refit, reusing a finished one on resume; returns comparison.json's `refit` entry."""
    epoch = refit_epoch(fold_runs)
    run_dir = out_dir / folder_name(strategy) / REFIT_DIR
    cfg = replace(config, strategy=strategy, out=str(run_dir))
    result = finished_run(run_dir, cfg, pool) if resume else None
    if result is None:
        started = resume and (run_dir / LAST_CKPT).is_file()
        result = train(cfg, data=pool, run_dir=run_dir, resume=started, quiet=quiet,
                       strategy=get_strategy(strategy, cfg.strategies_file), final_epoch=epoch)  # fmt: skip
    summary = result.summary or {}
    return {
        "strategy": strategy,
        "epoch": epoch,
        "fold_best_epochs": [(r.summary or {}).get(SUMMARY.best_epoch) for r in fold_runs],
        "images": summary.get(SUMMARY.num_train),
        "test_acc": summary.get(SUMMARY.test_acc),
        "run": str(run_dir),
    }


def refit_line(entry: dict[str, Any]) -> str:
    test = f"; test {entry['test_acc']:.1%}" if entry.get("test_acc") is not None else ""
    return (f"refit: {entry['strategy']} on all {entry['images']} pooled images to epoch {entry['epoch']} (the mean "
            f"best epoch of its folds, {entry['fold_best_epochs']}){test}; one model in {entry['run']} (thawline "
            "predict/evaluate/export accept it)")  # fmt: skip
