"""The sweep's search space and its Optuna study: how a trial's strategy is sampled from a registered one (LR
multipliers, epoch split, frozen fraction, layer decay), the RDB storage with heartbeats, and the bookkeeping that
lets several workers share one study (who runs a trial, failing the trials of a dead worker, one search per study).
"""

from __future__ import annotations

import random
import socket
import time
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from thawline.core.errors import ThawlineError
from thawline.training.strategies import Phase, Strategy

HEARTBEAT_S = 30  # a running trial writes a heartbeat this often
GRACE_PERIOD_S = 120  # ... and is failed by the next worker that sees no heartbeat for this long

LR_MULT = (0.1, 10.0)
PARTIAL_FRAC = (0.2, 0.9, 0.05)
LAYER_DECAY = (0.5, 1.0)


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
