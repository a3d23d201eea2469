"""`thawline sweep`: an Optuna study over strategy, learning rates, epoch split, partial fraction and layer decay.

Every trial is an ordinary run folder (`<out>/trial-<number>`) trained by `trainer.train` on data prepared once
per worker; the trial's strategy is built as data (`Strategy`/`Phase`) from the sampled values:

    strategy       categorical over --strategies
    lr_mult        log-uniform 0.1..10, multiplies every phase's default LR (so 1.0 is the registered recipe)
    lr2_mult       log-uniform 0.1..10, multiplies the later phases' LR again (multi-phase strategies)
    phase1_epochs  1..E-1 epochs of the budget E for the first of two phases (the rest go to the second)
    partial_frac   0.2..0.9, step 0.05: the frozen fraction of a one-phase `after:F` strategy (partial)
    layer_decay    0.5..1.0: LR multiplier per stage below the top trainable one (strategies that train stages)

The objective is the run's best validation accuracy (maximised). After every epoch the run's val accuracy is
reported to Optuna and Optuna's MedianPruner may stop the trial (state PRUNED) once half the budget is done.

The study lives in an RDB storage (default `sqlite:///<out>/sweep.db`; a `postgresql://` URL lets several
machines share one study). Rerunning the same command resumes: it runs trials until `--trials` of them are
finished (COMPLETE or PRUNED) in total, across all workers. Trials left RUNNING by a dead worker become FAIL:
at once when the worker ran on this machine (its pid is gone), otherwise through Optuna's heartbeat after
`GRACE_PERIOD_S` without one.

Here: the command (`sweep`), its arguments and the objective; sweep_study holds the search space and the study's
storage and bookkeeping, sweep_outputs the files and lines it writes.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

from thawline.comparing.comparison import parse_strategies
from thawline.comparing.sweep_outputs import (
    SweepResult,
    _closing_lines,
    _duration,
    _short_params,
    format_table,
    write_outputs,
)
from thawline.comparing.sweep_study import (
    GRACE_PERIOD_S,
    _check_search,
    _open_study,
    fail_dead_trials,
    finished_count,
    hide_password,
    open_storage,
    state_counts,
    strategy_to_dict,
    suggest_strategy,
    worker_identity,
)
from thawline.core.config import TrainConfig, replace
from thawline.core.errors import ThawlineError
from thawline.core.runformat import EPOCH, SUMMARY, trial_dir
from thawline.training import trainer
from thawline.training.prepare import input_settings, prepare_data
from thawline.training.runfolder import write_marker
from thawline.training.strategies import Strategy, get_strategy

DEFAULT_STRATEGIES = ("head-only", "two-phase", "layer-wise", "partial", "gradual", "full")
DEFAULT_EPOCHS = 4  # the budget when neither --epochs nor the config gives one
DEFAULT_STUDY = "thawline-sweep"
DEFAULT_OUT = "runs/sweep"  # fixed, not runs/sweep-N: rerunning the same command must find the same study
MAX_CONSECUTIVE_FAILURES = 3  # a worker stops when this many of its trials in a row failed (e.g. bad data)


def _check_arguments(
    config: TrainConfig, strategies: list[str] | tuple[str, ...] | str, trials: int, timeout: float | None
) -> tuple[list[str], dict[str, Strategy], int]:
    """(strategy names, their base strategies, epoch budget), or one line saying which argument to fix."""
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ThawlineError(f"--trials {trials!r}: must be a positive integer (the total number of trials)")
    if timeout is not None and not timeout > 0:
        raise ThawlineError(f"--timeout {timeout}: must be a positive number of seconds")
    if config.lr is not None:
        raise ThawlineError("--lr is what the sweep tunes (lr_mult per trial); leave it out")
    names = parse_strategies(strategies, config.strategies_file)
    bases = {name: get_strategy(name, config.strategies_file) for name in names}
    budget = config.epochs or DEFAULT_EPOCHS
    for name, base in bases.items():
        if len(base.phases) > budget:
            raise ThawlineError(
                f"strategy '{name}' has {len(base.phases)} phases but the budget is --epochs {budget}; "
                f"give --epochs {len(base.phases)} or more, or leave '{name}' out of --strategies"
            )
    return names, bases, budget


def sweep(
    config: TrainConfig,
    strategies: list[str] | tuple[str, ...] | str = DEFAULT_STRATEGIES,
    *,
    trials: int = 20,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    out: str | os.PathLike | None = None,
    quiet: bool = False,
    verbose: bool = False,
) -> SweepResult:
    """Run (or resume) the study until `trials` trials are COMPLETE or PRUNED, then write the sweep files."""
    import optuna

    started = time.perf_counter()
    names, bases, budget = _check_arguments(config, strategies, trials, timeout)
    out_dir = Path(out or config.out or DEFAULT_OUT).absolute()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ThawlineError(f"cannot create sweep folder '{out_dir}' ({e.strerror}); pass a writable --out") from None
    write_marker(out_dir, "sweep")  # thawline's folder: never read as data
    url = storage or f"sqlite:///{out_dir / 'sweep.db'}"
    shown = hide_password(url)
    study_name = study_name or DEFAULT_STUDY

    def say(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own one line per trial instead of Optuna's
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            me = worker_identity()
            study = _open_study(url, shown, study_name, config.seed, me, trials, budget)

            size, _ = input_settings(config)
            search = {"strategies": names, "epochs": budget, "model": config.model, "img_size": size}
            _check_search(study, search, shown)
            reaped = fail_dead_trials(study, me)
            if reaped:
                say(f"marked trial(s) {', '.join(map(str, reaped))} FAIL: their worker on this machine is gone")
            counts = state_counts(study)
            done, running = finished_count(counts), counts.get("RUNNING", 0)
            say(
                f"study '{study_name}' in {shown}: {done}/{trials} trials finished"
                + (f", {running} running elsewhere" if running else "")
                + f"; strategies {', '.join(names)}; {budget} epochs per trial"
            )
            errors: list[str] = []
            if done + running < trials:
                data = prepare_data(config, quiet)
                _check_search(study, {"classes": data.classes}, shown, attr="thawline_classes")
                objective = _objective(config, bases, names, budget, out_dir, data, me, trainer.train, verbose)
                stopper = _Stopper(trials, MAX_CONSECUTIVE_FAILURES, errors, say)
                study.optimize(objective, n_trials=None, timeout=timeout, callbacks=[stopper], catch=(ThawlineError,))
                if stopper.failures >= MAX_CONSECUTIVE_FAILURES:
                    raise ThawlineError(
                        f"{stopper.failures} trials in a row failed, the last with: {errors[-1]}; sweep stopped"
                    )
            elif running:
                say(f"the remaining trials are running on other workers (a dead one's fail after {GRACE_PERIOD_S}s)")
            result = write_outputs(study, out_dir, config, trials, shown, budget, time.perf_counter() - started)
    finally:
        optuna.logging.set_verbosity(verbosity)
    if not quiet:
        print(format_table(result.rows), flush=True)
        print(_closing_lines(result), flush=True)
    return result


def _objective(config, bases, names, budget, out_dir, data, me, train, verbose):
    import optuna

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", me)
        name = trial.suggest_categorical("strategy", names)
        strategy = suggest_strategy(trial, bases[name], budget)
        run_dir = out_dir / trial_dir(trial.number)
        trial.set_user_attr("strategy", strategy_to_dict(strategy))
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = replace(config, strategy=strategy.name, epochs=budget, out=str(run_dir), lr=None)

        def on_epoch(row: dict[str, Any]) -> None:
            trial.report(float(row[EPOCH.val_acc]), int(row[EPOCH.epoch]))
            if int(row[EPOCH.epoch]) < budget and trial.should_prune():
                raise optuna.TrialPruned(
                    f"val acc {row[EPOCH.val_acc]:.2%} at epoch {row[EPOCH.epoch]} is below the median"
                )

        try:
            run = train(cfg, data=data, run_dir=run_dir, quiet=not verbose, strategy=strategy, on_epoch=on_epoch)
        except ThawlineError as e:
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("test_acc", run.test_acc)
        trial.set_user_attr("train_time_s", run.summary.get(SUMMARY.train_time_s))
        return run.best_val_acc

    return objective


class _Stopper:
    """After each trial: print its line; stop when the study has enough finished (+ running) trials."""

    def __init__(self, target: int, max_failures: int, errors: list[str], say) -> None:
        self.target = target
        self.max_failures = max_failures
        self.failures = 0
        self.errors = errors
        self.say = say

    def __call__(self, study: Any, trial: Any) -> None:
        counts = state_counts(study)
        done = finished_count(counts)
        self.say(f"[{done}/{self.target}] {_trial_line(trial)}")
        if trial.state.name == "FAIL":
            self.failures += 1
            self.errors.append(str(trial.user_attrs.get("error", "unknown error")))
        else:
            self.failures = 0
        # Trials running on other workers will finish too: do not start one that would overshoot the total.
        if done + counts.get("RUNNING", 0) >= self.target or self.failures >= self.max_failures:
            study.stop()


def _trial_line(trial: Any) -> str:
    value = "-" if trial.value is None else f"{trial.value:.2%}"
    secs = _duration(trial)
    tail = f"  {trial.user_attrs['error']}" if trial.state.name == "FAIL" and "error" in trial.user_attrs else ""
    return (
        f"trial {trial.number} {trial.state.name.lower()}: val acc {value}  {trial.params.get('strategy', '?')}  "
        f"{_short_params(trial.params)}" + (f"  {secs:.0f}s" if secs is not None else "") + tail
    )


__all__ = [
    "DEFAULT_STRATEGIES",
    "SweepResult",
    "open_storage",
    "strategy_to_dict",
    "suggest_strategy",
    "sweep",
]
