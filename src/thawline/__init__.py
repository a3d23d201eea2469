"""thawline: fine-tune pretrained image classifiers and compare freezing/thawing strategies side by side.

Python API mirrors the CLI:
    thawline.train(config) -> RunResult
    thawline.compare(config, strategies) -> CompareResult
    thawline.advise(config) -> Advice   (predicted ranking from frozen-feature probes, no training)

Bad input raises `thawline.ThawlineError` (one line saying what and how to fix it). Scripts that need a layer's
parts import them from its subpackage (`thawline.comparing`, `thawline.report`, `thawline.training`,
`thawline.models`, `thawline.data`: each names its public API in its docstring and `__all__`), never its modules.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. On a CPU shared with other
# jobs, spinning threads wait on each other whenever one is descheduled; measured on the 2-core dev machine under a
# load average of ~4.5, lite0 training at 64 px went from 7.5 img/s (default) to 53 img/s (passive).
# Set OMP_WAIT_POLICY yourself to override.
OMP_WAIT_POLICY = "PASSIVE"
os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)

__version__ = "0.1.0"

# The one error type: bad input or an unwritable file, said in one line (the CLI prints it, no traceback).
from thawline.core.errors import ThawlineError  # noqa: E402

# What thawline.advise returns, from the torch-free module that reads advise.json (numpy, no torch).
from thawline.report.advice import Advice  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path

    from thawline.comparing.comparison import CompareResult
    from thawline.comparing.estimate import Estimate
    from thawline.core.config import TrainConfig
    from thawline.training.run_state import RunResult


# train, compare and advise import their modules when called: `import thawline`, which every `thawline.x` import
# runs first (the CLI's included), loads no torch.
def train(config: TrainConfig, **kwargs: Any) -> RunResult:
    from thawline.training.trainer import train as _train

    return _train(config, **kwargs)


def compare(
    config: TrainConfig,
    strategies: str | list[str] | tuple[str, ...] | None = None,
    out: str | Path | None = None,
    **options: Any,
) -> CompareResult:
    """Every strategy (all by default) trained on the same data and ranked (`thawline.comparing.comparison`: what
    each option does, what it writes). `options` are `thawline.comparing.CompareOptions`' fields (seeds, halving,
    folds, race, refit, jobs, ray, resume, quiet, ...), declared and documented there once. `jobs=N` trains N trials
    at once in spawned processes: a script that calls it needs the `if __name__ == "__main__":` guard."""
    from thawline.comparing.comparison import DEFAULT_STRATEGIES
    from thawline.comparing.comparison import compare as _compare

    return _compare(config, strategies or DEFAULT_STRATEGIES, out, **options)


def plan_compare(
    config: TrainConfig,
    strategies: str | list[str] | tuple[str, ...] | None = None,
    out: str | Path | None = None,
    **options: Any,
) -> Estimate:
    """What `compare(config, strategies, out, **options)` would train and how long it would take here, with nothing
    trained or written (`compare --dry-run`): `.plan` holds the trials, phases and counts, `.total_seconds` the
    estimate; `thawline.comparing.format_plan(result)` is the dry run's table."""
    from thawline.comparing.comparison import DEFAULT_STRATEGIES
    from thawline.comparing.dryrun import plan_compare as _plan
    from thawline.comparing.options import CompareOptions

    return _plan(config, CompareOptions.of(strategies or DEFAULT_STRATEGIES, out, **options))


def advise(config: TrainConfig, out: str | Path | None = None, **kwargs: Any) -> Advice:
    """Probe the frozen backbone on a sample of `config.data` and predict the strategies' ranking, with no training
    (`thawline.comparing.advise.advise`: its keyword options, what it writes)."""
    from thawline.comparing.advise import advise as _advise

    return _advise(config, out, **kwargs)


def make_config(**options: Any) -> TrainConfig:
    """`TrainConfig` from keyword options with presets and validation, e.g. make_config(data="d", epochs=3)."""
    from thawline.core.config import make_config as _make

    return _make(options)


__all__ = ["OMP_WAIT_POLICY", "Advice", "ThawlineError", "__version__", "advise", "compare", "make_config",
           "plan_compare", "train"]
