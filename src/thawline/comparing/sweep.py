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
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import socket
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from thawline.comparing.comparison import parse_strategies
from thawline.core.atomic import write_text_atomic
from thawline.core.config import TrainConfig, replace
from thawline.core.errors import ThawlineError
from thawline.training import trainer
from thawline.training.prepare import input_settings, prepare_data
from thawline.training.runfolder import write_marker
from thawline.training.strategies import Phase, Strategy, get_strategy

DEFAULT_STRATEGIES = ("head-only", "two-phase", "layer-wise", "partial", "gradual", "full")
DEFAULT_EPOCHS = 4  # the budget when neither --epochs nor the config gives one
DEFAULT_STUDY = "thawline-sweep"
DEFAULT_OUT = "runs/sweep"  # fixed, not runs/sweep-N: rerunning the same command must find the same study
HEARTBEAT_S = 30  # a running trial writes a heartbeat this often
GRACE_PERIOD_S = 120  # ... and is failed by the next worker that sees no heartbeat for this long
MAX_CONSECUTIVE_FAILURES = 3  # a worker stops when this many of its trials in a row failed (e.g. bad data)

LR_MULT = (0.1, 10.0)
PARTIAL_FRAC = (0.2, 0.9, 0.05)
LAYER_DECAY = (0.5, 1.0)


@dataclass
class SweepResult:
    out_dir: Path
    study_name: str
    storage: str  # password hidden
    summary: dict[str, Any]
    rows: list[dict[str, Any]]  # one per trial, as in trials.csv
    best_config: Path | None
    best_strategy: Path | None


# ---- the search space -------------------------------------------------------------------------------------


def _trains_stages(selector: str) -> bool:
    sel = selector.strip().lower()
    return sel not in ("head", "last:0")


def suggest_strategy(trial: Any, base: Strategy, budget: int) -> Strategy:
    """The trial's strategy: `base` with sampled LRs, epoch split, frozen fraction and layer decay."""
    phases = list(base.phases)
    lr_mult = trial.suggest_float("lr_mult", *LR_MULT, log=True)
    later_mult = trial.suggest_float("lr2_mult", *LR_MULT, log=True) if len(phases) > 1 else 1.0
    if len(phases) == 2:
        first = trial.suggest_int("phase1_epochs", 1, budget - 1)
        shares = [first, budget - first]
    else:
        shares = [p.epochs for p in phases]
    trains = [p.train for p in phases]
    if len(phases) == 1 and trains[0].strip().lower().startswith("after:"):
        lo, hi, step = PARTIAL_FRAC
        frac = round(trial.suggest_float("partial_frac", lo, hi, step=step), 2)
        trains = [f"after:{frac:g}"]
    decay = trial.suggest_float("layer_decay", *LAYER_DECAY) if any(_trains_stages(t) for t in trains) else 1.0
    tuned = []
    for i, (phase, train, share) in enumerate(zip(phases, trains, shares, strict=True)):
        lr = phase.lr * lr_mult * (later_mult if i > 0 else 1.0)
        tuned.append(
            Phase(
                train=train,
                epochs=share,
                lr=float(f"{lr:.3g}"),
                bn=phase.bn,
                layer_decay=round(decay, 3) if _trains_stages(train) else phase.layer_decay,
                head_lr_mult=phase.head_lr_mult,
            )
        )
    number = getattr(trial, "number", None)
    description = f"{base.name} tuned by thawline sweep (trial {number})"
    return Strategy(base.name, tuple(tuned), description, base.init, head=base.head)


def strategy_to_dict(strategy: Strategy) -> dict[str, Any]:
    """The strategies-file form (`strategy_from_dict` reads it back)."""
    return {
        "description": strategy.description,
        "init": strategy.init,
        "head": strategy.head,
        "phases": [asdict(p) for p in strategy.phases],
    }


# ---- storage and study ------------------------------------------------------------------------------------


def hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given, minus anything after '@'
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str):
    """An Optuna RDBStorage with heartbeats; any failure is one ThawlineError line naming the URL."""
    import optuna
    import sqlalchemy.exc

    shown = hide_password(url)
    if "://" not in url:
        raise ThawlineError(
            f"--storage '{shown}' is not a database URL; use sqlite:///path/sweep.db or "
            "postgresql://user:password@host/dbname"
        )
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # heartbeat thread and trials write to one file
    try:
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_PERIOD_S
                    )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Workers starting together race to create the tables; the loser finds them on a retry.
                if attempt == 2:
                    raise
                time.sleep(0.5 + random.random())
        raise AssertionError("unreachable")
    except ImportError as e:  # Optuna wraps the driver's ModuleNotFoundError
        missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "its driver"
        hint = "pip install 'psycopg[binary]'" if "psycopg" in str(missing) else f"pip install {missing}"
        raise ThawlineError(f"--storage '{shown}': database driver '{missing}' is not installed ({hint})") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, OSError) as e:
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()
        first = detail[0] if detail else type(e).__name__
        raise ThawlineError(f"--storage '{shown}': cannot open the database ({first})") from None


def worker_identity() -> dict[str, Any]:
    """Host, boot and process of this worker: enough to tell later whether it is still alive."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = str(psutil.boot_time())
    proc = psutil.Process()
    return {"host": socket.gethostname(), "boot": boot, "pid": proc.pid, "started": proc.create_time()}


def _alive(worker: dict[str, Any]) -> bool:
    try:
        return abs(psutil.Process(int(worker["pid"])).create_time() - float(worker["started"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def fail_dead_trials(study: Any, me: dict[str, Any]) -> list[int]:
    """Fail RUNNING trials whose worker is gone: same machine -> its pid is dead; elsewhere -> no heartbeat."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker") or {}
        if w.get("host") != me["host"] or w.get("boot") != me["boot"] or _alive(w):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # another worker got there first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


def state_counts(study: Any) -> dict[str, int]:
    return dict(Counter(t.state.name for t in study.get_trials(deepcopy=False)))


def finished_count(counts: dict[str, int]) -> int:
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def _check_search(study: Any, search: dict[str, Any], storage: str, attr: str = "thawline_search") -> None:
    """A study keeps one search (strategies, budget, model, classes); a different one needs a new study."""
    old = study.user_attrs.get(attr)
    if old is None:
        study.set_user_attr(attr, search)
        return
    for key, value in search.items():
        if old.get(key) != value:
            raise ThawlineError(
                f"study '{study.study_name}' in {storage} was started with {key} {old.get(key)!r}, this command "
                f"gives {value!r}; repeat the original settings to resume it, or pass a new --study or --out"
            )


# ---- the sweep --------------------------------------------------------------------------------------------


def _open_study(url: str, shown: str, study_name: str, seed: int, me: dict[str, Any], trials: int, budget: int):
    """The study in `url` (created on first use): TPE over the strategy's parameters, median pruning per epoch."""
    import optuna

    sampler = optuna.samplers.TPESampler(
        n_startup_trials=max(3, min(10, trials // 3)),
        multivariate=True,
        group=True,  # conditional parameters (lr2_mult, partial_frac, ...) depend on the strategy
        # distinct per worker and per resume, so parallel workers do not start with the same trials
        seed=(seed * 1_000_003 + me["pid"] * 7919 + int(time.time())) % 2**32,
    )
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(2, (budget + 1) // 2))
    try:
        study = optuna.create_study(
            storage=open_storage(url),
            study_name=study_name,
            direction="maximize",
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    except Exception as e:  # noqa: BLE001 - e.g. an existing multi-objective study of the same name
        raise ThawlineError(f"cannot create or load study '{study_name}' in {shown}: {e}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ThawlineError(f"study '{study_name}' in {shown} minimises; pass a new --study")
    return study


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
        run_dir = out_dir / f"trial-{trial.number}"
        trial.set_user_attr("strategy", strategy_to_dict(strategy))
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = replace(config, strategy=strategy.name, epochs=budget, out=str(run_dir), lr=None)

        def on_epoch(row: dict[str, Any]) -> None:
            trial.report(float(row["val_acc"]), int(row["epoch"]))
            if int(row["epoch"]) < budget and trial.should_prune():
                raise optuna.TrialPruned(f"val acc {row['val_acc']:.2%} at epoch {row['epoch']} is below the median")

        try:
            run = train(cfg, data=data, run_dir=run_dir, quiet=not verbose, strategy=strategy, on_epoch=on_epoch)
        except ThawlineError as e:
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("test_acc", run.test_acc)
        trial.set_user_attr("train_time_s", run.summary.get("train_time_s"))
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


def _duration(trial: Any) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return round((trial.datetime_complete - trial.datetime_start).total_seconds(), 2)


def _short_params(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        if key == "strategy":
            continue
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def _trial_line(trial: Any) -> str:
    value = "-" if trial.value is None else f"{trial.value:.2%}"
    secs = _duration(trial)
    tail = f"  {trial.user_attrs['error']}" if trial.state.name == "FAIL" and "error" in trial.user_attrs else ""
    return (
        f"trial {trial.number} {trial.state.name.lower()}: val acc {value}  {trial.params.get('strategy', '?')}  "
        f"{_short_params(trial.params)}" + (f"  {secs:.0f}s" if secs is not None else "") + tail
    )


# ---- outputs ----------------------------------------------------------------------------------------------

TRIAL_COLUMNS = ("number", "state", "value", "strategy", "duration_s", "params", "test_acc", "run_dir", "error")


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.state.name in ("COMPLETE", "PRUNED") else None,
                "strategy": t.params.get("strategy"),
                "duration_s": _duration(t),
                "params": t.params,
                "test_acc": t.user_attrs.get("test_acc"),
                "run_dir": t.user_attrs.get("run_dir"),
                "error": t.user_attrs.get("error"),
            }
        )
    return rows


def write_outputs(
    study: Any, out_dir: Path, config: TrainConfig, target: int, shown: str, budget: int, wall: float
) -> SweepResult:
    """trials.csv, sweep_summary.json and, once a trial completed, best_strategy.yaml + best_config.yaml."""
    import optuna

    rows = trial_rows(study)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TRIAL_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "params": json.dumps(r["params"], sort_keys=True)})
    write_text_atomic(out_dir / "trials.csv", buf.getvalue())

    counts = state_counts(study)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    summary: dict[str, Any] = {
        "study": study.study_name,
        "storage": shown,
        "objective": "best validation accuracy (maximised)",
        "trials_target": target,
        "trials_finished": finished_count(counts),
        "states": counts,
        "search": study.user_attrs.get("thawline_search"),
        "best": None,
        "worker_wall_time_s": round(wall, 2),
        "trial_time_s": round(sum(r["duration_s"] or 0 for r in rows), 2),
    }
    best_config = best_strategy = None
    if complete:
        best = study.best_trial
        spec = best.user_attrs.get("strategy")
        summary["best"] = {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "test_acc": best.user_attrs.get("test_acc"),
            "run_dir": best.user_attrs.get("run_dir"),
            "strategy": spec,
        }
        if spec:
            best_strategy, best_config = _write_best(out_dir, config, best, spec, budget)
            summary["best_config"] = str(best_config)
            summary["best_strategy"] = str(best_strategy)
    else:
        summary["best_omitted"] = "no trial has completed yet"
    if len({t.value for t in complete}) == 1 and len(complete) >= 2:
        summary["importances_omitted"] = f"all {len(complete)} complete trials have the same value"
    elif len(complete) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study)
            summary["importances"] = {k: round(float(v), 4) for k, v in importances.items()}
        except Exception as e:  # noqa: BLE001 - e.g. every complete trial has the same value
            summary["importances_omitted"] = f"optuna could not compute them: {e}"
    else:
        summary["importances_omitted"] = f"needs at least 2 complete trials, the study has {len(complete)}"
    write_text_atomic(out_dir / "sweep_summary.json", json.dumps(summary, indent=2, default=str))
    return SweepResult(out_dir, study.study_name, shown, summary, rows, best_config, best_strategy)


def _write_best(out_dir: Path, config: TrainConfig, best: Any, spec: dict[str, Any], budget: int) -> tuple[Path, Path]:
    import yaml

    base = best.params.get("strategy", "strategy")
    name = f"{base}-tuned"
    strategy_file = out_dir / "best_strategy.yaml"
    header = f"# best trial {best.number} of the sweep in {out_dir} (val acc {best.value:.2%})\n"
    write_text_atomic(
        strategy_file,
        header
        + "# use with --strategies-file; phase epochs are shares of --epochs\n"
        + yaml.safe_dump({"strategies": {name: spec}}, sort_keys=False),
    )
    values = {k: v for k, v in config.to_dict().items() if v is not None and k not in ("out", "extra", "lr")}
    values.update({"strategy": name, "strategies_file": str(strategy_file), "epochs": budget})
    if values.get("data"):
        values["data"] = str(Path(values["data"]).absolute())
    if values.get("cache_dir"):
        values["cache_dir"] = str(Path(values["cache_dir"]).absolute())
    config_file = out_dir / "best_config.yaml"
    write_text_atomic(
        config_file,
        header
        + "# thawline train --config best_config.yaml (flags given there win over this file)\n"
        + yaml.safe_dump(values, sort_keys=False),
    )
    return strategy_file, config_file


def format_table(rows: list[dict[str, Any]], limit: int = 10) -> str:
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3, "WAITING": 4}
    ranked = sorted(rows, key=lambda r: (order.get(r["state"], 5), -(r["value"] or 0), r["number"]))
    header = f"{'trial':>5}  {'state':<8} {'val acc':>8} {'strategy':<12} {'secs':>6}  params"
    lines = [header, "-" * 90]
    for r in ranked[:limit]:
        value = "-" if r["value"] is None else f"{r['value']:.2%}"
        secs = "-" if r["duration_s"] is None else f"{r['duration_s']:.0f}"
        lines.append(
            f"{r['number']:>5}  {r['state'].lower():<8} {value:>8} {r['strategy'] or '-':<12} {secs:>6}  "
            f"{_short_params(r['params'])}"
        )
    if len(ranked) > limit:
        lines.append(f"... {len(ranked) - limit} more in trials.csv")
    return "\n".join(lines)


def _closing_lines(result: SweepResult) -> str:
    s = result.summary
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(s["states"].items()))
    lines = [f"{s['trials_finished']}/{s['trials_target']} trials finished ({states})"]
    best = s.get("best")
    if best:
        spec = best.get("strategy") or {}
        phases = " -> ".join(
            f"{p['train']} x{p['epochs']} @ {p['lr']:g}"
            + (f" decay {p['layer_decay']:g}" if p["layer_decay"] != 1 else "")
            for p in spec.get("phases", [])
        )
        lines.append(
            f"best: trial {best['trial']} {best['params'].get('strategy')} val acc {best['value']:.2%}: {phases}"
        )
    if "importances" in s:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in s["importances"].items()))
    if result.best_config:
        lines.append(f"train it: thawline train --config {result.best_config}")
    lines.append(f"wrote {result.out_dir / 'sweep_summary.json'} and {result.out_dir / 'trials.csv'}")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_STRATEGIES",
    "SweepResult",
    "open_storage",
    "strategy_to_dict",
    "suggest_strategy",
    "sweep",
]
