"""Several runs and predictions about them: the comparison (seeds, halving, model grid, shift test), the Optuna
sweep, and the advisor's frozen-feature probes.

The public API of a comparison's parts, for scripts (benchmarks/) and other schedulers or executors; importing it
loads no torch (`run_comparison` and `InProcessExecutor` load theirs when first used):
- a comparison's options and trials: `CompareOptions`, `Trial`, `Request`, `make_trials`, `trial_folder`,
  `parse_strategies`, `DEFAULT_STRATEGIES`;
- its schedulers: `AllTrials`, `Halving` (and the race's parts `halving_rungs`, `halving_keep`,
  `halving_survivors`, `halving_carried`), driven by `run_schedule`;
- its executors: `InProcessExecutor` (one trial after another in this process) and `LocalPoolExecutor` (`--jobs N`:
  N at once in worker processes, given a `WorkerSpec`);
- the advisor's rules that `--advise` and the halving race read: `PRIOR`, `RULES`, `RULE_WEIGHT`,
  `STRATEGY_ORDER`, `signals_from_doc`, `rank_strategies`, `far_behind`;
- the halving race replayed from a full comparison's per-epoch metrics, without training (`replay`): `read_curves`,
  `first_epochs`, `simulate_halving`, `halving_floor`;
- a comparison's plan and time estimate without training (`compare --dry-run`): `plan_compare`, `format_plan`.
"""

from __future__ import annotations

from typing import Any

from thawline.comparing.options import DEFAULT_STRATEGIES, CompareOptions, parse_strategies
from thawline.comparing.replay import first_epochs, halving_floor, read_curves, simulate_halving
from thawline.comparing.schedulers import (
    AllTrials,
    Halving,
    halving_carried,
    halving_keep,
    halving_rungs,
    halving_survivors,
    run_schedule,
)
from thawline.comparing.trials import Request, Trial, make_trials, trial_folder
from thawline.report.advice_rules import (
    PRIOR,
    RULE_WEIGHT,
    RULES,
    STRATEGY_ORDER,
    far_behind,
    rank_strategies,
    signals_from_doc,
)

_LAZY = {"run_comparison": "thawline.comparing.comparison", "InProcessExecutor": "thawline.comparing.executor",
         "LocalPoolExecutor": "thawline.comparing.pool", "WorkerSpec": "thawline.comparing.pool",
         "plan_compare": "thawline.comparing.dryrun", "format_plan": "thawline.comparing.dryrun"}  # fmt: skip


def __getattr__(name: str) -> Any:  # the parts that train import torch: only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thawline.comparing' has no attribute '{name}'")


__all__ = [
    "DEFAULT_STRATEGIES",
    "PRIOR",
    "RULES",
    "RULE_WEIGHT",
    "STRATEGY_ORDER",
    "AllTrials",
    "CompareOptions",
    "Halving",
    "InProcessExecutor",
    "LocalPoolExecutor",
    "Request",
    "Trial",
    "WorkerSpec",
    "far_behind",
    "first_epochs",
    "format_plan",
    "halving_carried",
    "halving_floor",
    "halving_keep",
    "halving_rungs",
    "halving_survivors",
    "make_trials",
    "parse_strategies",
    "plan_compare",
    "rank_strategies",
    "read_curves",
    "run_comparison",
    "run_schedule",
    "signals_from_doc",
    "simulate_halving",
    "trial_folder",
]
