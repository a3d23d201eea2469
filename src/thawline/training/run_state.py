"""What a run carries between its steps (`Run`, `LoopState`) and what it returns (`RunResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from thawline.core.runformat import SUMMARY
from thawline.training import distributed, runtime
from thawline.training.prepare import RunSetup
from thawline.training.tracking import Tracker


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any] | None  # None: paused before its last epoch (train's stop_after_epoch)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_val_acc(self) -> float:
        return float(self.summary[SUMMARY.best_val_acc])

    @property
    def test_acc(self) -> float | None:
        return self.summary.get(SUMMARY.test_acc)


@dataclass
class Run:
    """The fixed parts of one run, set up before its first step."""

    setup: RunSetup
    out: Path
    resolved_config: dict[str, Any]  # config.yaml: the options plus everything derived from them
    tracker: Tracker
    meter: runtime.MemoryMeter
    initial: dict[str, torch.Tensor]  # weights before training, for the per-stage drift
    quiet: bool
    main: bool = field(default_factory=distributed.is_main)  # under torchrun only rank 0 writes files and prints
    folder_id: tuple[int, int] | None = None  # (device, inode) of `out` when the run opened it: replaced -> stop
    across: bool = field(default_factory=distributed.active)  # DDP: statistics and evaluation over all ranks

    @property
    def name(self) -> str:
        return self.setup.strategy.name


@dataclass
class LoopState:
    """What changes as the run trains; restored from last.pt on resume."""

    optimizer: torch.optim.Optimizer | None = None
    best_acc: float = -1.0
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    # The best epoch's validation when it ran the whole model on full images: the final val evaluation itself
    best_eval: Any = None  # engine.EvalResult (this module imports no engine)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    done_epochs: int = 0  # epochs the restored checkpoint holds (skipped on resume)
    global_epoch: int = 0
    trainable_per_phase: list[int] = field(default_factory=list)
    phase_test: dict[int, float] = field(default_factory=dict)
