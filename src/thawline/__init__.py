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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# Before torch loads its OpenMP runtime: how idle OpenMP threads wait, unless you set OMP_WAIT_POLICY yourself. On a
# CPU shared with other jobs they must sleep at once (PASSIVE): spinning threads wait on each other whenever one is
# descheduled (2-core dev machine at load ~4.5: Lite0 at 64 px trained at 7.5 img/s with libgomp's default spin, 53
# passive; beside two busy processes, 31 img/s passive against 20 with a 30,000-iteration spin). On an idle machine a
# short spin saves the other threads' wake-up at each of a CNN's many small ops (quiet, Lite0 at 128 px: timm
# train.py's wall time / thawline's 0.90x passive, 1.07x with that spin). So the spin only when the machine is idle
# as thawline starts (no other task runnable in most of five looks at /proc/loadavg, 10 ms apart; where there is
# none, a 1-minute load average under 0.5), else passive. A policy is set once per process, so a long compare keeps
# the one its start saw.
SPIN = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "30000"}


def _runnable_now() -> int:
    with open("/proc/loadavg") as f:  # "0.52 0.58 0.59 R/T last-pid": R tasks runnable now, this one included
        return int(f.read().split()[3].split("/")[0])


def _idle(samples: int = 5, runnable: Callable[[], int] = _runnable_now) -> bool:
    """Whether no other task is runnable in most of `samples` looks, 10 ms apart: a busy task is seen in every look,
    one passing by (a command just ending, as timm's train.py right before thawline in `benchmarks/gpu_check.py`)
    in one or two. Decided as soon as a majority agrees."""
    import time

    quiet = busy = 0
    try:
        for _ in range(samples):
            if runnable() > 1:
                busy += 1
            else:
                quiet += 1
            if max(quiet, busy) > samples // 2:
                break
            time.sleep(0.01)
        return quiet > busy
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0] < 0.5
        except OSError:  # no load figures on this platform: the safe choice
            return False


# Trials trained side by side (compare --jobs, --ray) share the cores with each other: their processes get SHARED.
SHARED = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}
OMP_CHOSEN_HERE = "OMP_WAIT_POLICY" not in os.environ  # False: yours, which thawline never changes
if OMP_CHOSEN_HERE:
    os.environ.update(SPIN if _idle() else SHARED)
OMP_WAIT_POLICY = os.environ["OMP_WAIT_POLICY"]  # the policy in force (yours when you set it)

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
