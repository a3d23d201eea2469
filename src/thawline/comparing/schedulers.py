"""Which trials of a comparison run, and how far: `AllTrials` (every trial to its whole budget: the plain compare,
its seeds, its model grid) and `Halving` (successive halving, `compare --halving`). No torch.

A scheduler's one method, `next(results)`, returns the next requests given every result so far (keyed by its
request; a result has the run's `metrics` rows and its `summary`, None while paused), or [] when the comparison is
done; `finalists` are then the trials that reached the whole budget, the ones the answer ranks. `run_schedule`
drives a scheduler with an executor; what a scheduler asks never depends on which executor runs it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from thawline.comparing.trials import Request, Trial
from thawline.core.atomic import write_text_atomic
from thawline.core.errors import ThawlineError
from thawline.core.runformat import EPOCH, HALVING_JSON
from thawline.report.advice import ADVICE_DIR, load_advice
from thawline.report.advice_rules import PRIOR

if TYPE_CHECKING:
    from thawline.training.run_state import RunResult

Results = Mapping[Request, "RunResult"]


class Scheduler(Protocol):
    finalists: list[Trial]

    def next(self, results: Results) -> list[Request]: ...


class BatchRunner(Protocol):
    def run_batch(self, requests: Sequence[Request]) -> Mapping[Request, RunResult]: ...


class ScheduleProgress(Protocol):
    """What follows a schedule as it runs (`progress.Progress`): each batch as it starts, each request as it ends."""

    def batch_started(self, batch: Sequence[Request]) -> None: ...

    def done(self, request: Request, seconds: float) -> None: ...


def run_schedule(
    scheduler: Scheduler,
    run: Callable[[Request], RunResult] | BatchRunner,
    progress: ScheduleProgress | None = None,
) -> dict[Request, RunResult]:
    """Every request the scheduler asks for, run by `run`: an executor, given each batch whole (`run_batch`: its
    requests may run at the same time; the scheduler decides once all are done), or a function of one request,
    called in the order asked; the results, in the order asked. A request missing from a batch's results failed
    (its worker kept dying, `retries.py`): its trial is dropped from the schedule (`drop`), or, for a scheduler
    that cannot go on without it, the comparison stops in one line. `progress` hears of each batch and finished
    request (an executor reports each as it finishes through its `on_done(request, seconds)`)."""
    results: dict[Request, RunResult] = {}
    run_batch = getattr(run, "run_batch", None)
    if run_batch is not None and progress is not None:
        run.on_done = progress.done  # type: ignore[union-attr]
    while batch := scheduler.next(results):
        if progress is not None:
            progress.batch_started(batch)
        if run_batch is not None:
            done = run_batch(batch)
            for request in batch:
                if request in done:
                    results[request] = done[request]
                    continue
                drop = getattr(scheduler, "drop", None)
                if drop is None:
                    raise ThawlineError(f"'{request.trial.name}' failed (its worker kept dying) and this schedule "
                                        "needs every one of its trials; resume the compare to retry it")  # fmt: skip
                drop(request.trial)
        else:
            for request in batch:
                start = time.perf_counter()
                results[request] = run(request)  # type: ignore[operator]
                if progress is not None:
                    progress.done(request, time.perf_counter() - start)
    return results


class AllTrials:
    """Every trial once, to its whole budget, in the given order."""

    def __init__(self, trials: Iterable[Trial]) -> None:
        self.finalists = list(trials)

    def next(self, results: Results) -> list[Request]:
        return [r for r in map(Request, self.finalists) if r not in results]

    def drop(self, trial: Trial) -> None:
        """A trial that failed: not asked for again, not ranked."""
        self.finalists.remove(trial)


# The schedule's reduction factor (Hyperband's, Li et al. 2017): the rungs divide the budget by 3 per round and the
# i-th rung keeps the best n / 3^i of the n strategies (7: 3, then 1). Replayed on the 13-task suite
# (benchmarks/advise_suite.py) it named the full compare's pick on every task; keeping the better half at epochs
# 2, 4, 8 named it on 10 of 13 in more time.
HALVING_ETA = 3


def halving_rungs(budget: int, n_strategies: int) -> list[int]:
    """The epochs at which strategies are compared: the budget divided by HALVING_ETA once per round until one
    would remain, the last rung the whole budget (e.g. 7 strategies, 8 epochs: 1, 3, 8). On a short budget a rung
    that would fall on or before the previous one moves to the next epoch (7 strategies, 4 epochs: 1, 2, 4, not
    1, 4: merged, the first rung's three survivors and the carried one all ran the last three epochs, 71% of the
    full compare's time on the suite's 4-epoch task); rounds that find no epoch left before the budget are dropped."""
    rounds = max(1, math.ceil(math.log(max(n_strategies, 2)) / math.log(HALVING_ETA) - 1e-9))
    rungs: list[int] = []
    for i in range(rounds):
        epoch = max(round(budget / HALVING_ETA ** (rounds - i)), rungs[-1] + 1 if rungs else 1)
        if epoch >= budget:
            break
        rungs.append(epoch)
    return [*rungs, budget]


def halving_keep(n_strategies: int, rung: int) -> int:
    """How many of `n_strategies` continue past the `rung`-th rung (1, 2, ...) on their score: n / 3^rung rounded
    up, at least one (7 strategies: 3, then 1). The carried strategy comes on top of these, so it never makes the
    schedule's later rungs keep more (counting it in the third had 7 -> 4 -> 3 reach the end on 3 suite tasks)."""
    return max(1, math.ceil(n_strategies / HALVING_ETA**rung))


def halving_survivors(scores: dict[str, float], carried: str | None, keep: int) -> list[str]:
    """Who continues past a rung, best first: the `keep` best of `scores` (each strategy's best val accuracy so far;
    ties keep the given order), and `carried` whatever its score. Halving judges every strategy at the same epoch,
    which is unfair to a schedule that thaws late (gradual lost 7 and 15 points on the suite when stopped early), so
    the strategy predicted best is carried to the end instead of being judged on its first phases."""
    kept = sorted(scores, key=lambda n: -scores[n])[:keep]  # stable
    return kept + [carried] if carried in scores and carried not in kept else kept


def halving_carried(names: list[str], folder: Path) -> str:
    """The strategy halving never stops: the advisor's top pick among `names` when `--advise` ran into `folder`,
    else the first of `names` in the advisor's prior (the order that fits the task suite best; no pass needed)."""
    doc = load_advice(folder / ADVICE_DIR)
    order = [r["strategy"] for r in doc["ranking"]] if doc else sorted(PRIOR, key=lambda n: -PRIOR[n])
    return next((n for n in order if n in names), names[0])


def halving_stopped_line(folder: Path) -> str | None:
    """The strategies `--halving` stopped early, which the ranked table leaves out: 'stopped early by --halving
    (not ranked): two-phase after epoch 1 (val 74.0%), ...', from the folder's halving.json."""
    try:
        stopped = json.loads((folder / HALVING_JSON).read_text()).get("stopped") or {}
    except (OSError, ValueError):
        return None
    if not stopped:
        return None
    by_epoch = sorted(stopped.items(), key=lambda kv: (kv[1]["epoch"], -kv[1]["val_acc"]))
    parts = [f"{name} after epoch {s['epoch']} (val {s['val_acc']:.1%})" for name, s in by_epoch]
    return "stopped early by --halving (not ranked): " + ", ".join(parts)


class Halving:
    """Successive halving across strategies: every strategy trains to the first rung, the best `halving_keep` by
    best val accuracy so far (and `carried`, whatever its score) continue from their checkpoints to the next rung,
    ... until the last rung, the whole budget. A strategy with several seeds (its trials) is judged by the mean
    over them and continues or stops on all of them. `entrants`: how many strategies the race started with when
    `--advise` left some out before any training (a rung zero): the rungs and the counts kept follow from it, so
    leaving out a strategy that would have lost at the first rung changes nothing else. `state`: the halving.json
    of a resumed race (its rungs, survivors and scores; done rungs are not run again); `log`: where to write it
    after each rung (None: nowhere, as on a DDP rank other than 0)."""

    def __init__(
        self,
        trials: Iterable[Trial],
        budget: int,
        carried: str,
        *,
        entrants: int | None = None,
        state: dict[str, Any] | None = None,
        log: Path | None = None,
        quiet: bool = True,
    ) -> None:
        self.trials: dict[str, list[Trial]] = {}
        for trial in trials:
            self.trials.setdefault(trial.strategy, []).append(trial)
        names = list(self.trials)
        self.entrants = max(entrants or 0, len(names))
        self.state = dict(state or {})
        self.rungs: list[int] = self.state.get("rungs") or halving_rungs(budget, self.entrants)  # a resumed race's
        self.carried: str = self.state.get("carried") or carried
        self.alive: list[str] = list(self.state.get("alive", names))
        self.stopped: dict[str, dict[str, Any]] = dict(self.state.get("stopped", {}))
        self.scores: dict[str, dict[str, float]] = dict(self.state.get("scores", {}))
        self.log, self.quiet = log, quiet
        self.current: int | None = None  # the rung whose requests are out
        if len(self.rungs) == 1 and not quiet and not self.state:
            print(f"[halving] --epochs {budget} leaves no earlier epoch to compare at: every strategy trains the "
                  "whole budget (halving needs 2 or more)", flush=True)  # fmt: skip

    @property
    def finalists(self) -> list[Trial]:
        return [t for name in self.alive for t in self.trials.get(name, [])]

    def next(self, results: Results) -> list[Request]:
        start = 0
        if self.current is not None:
            self._judge(self.current, results)
            start = self.current + 1
        self.current = None
        for i in range(start, len(self.rungs)):
            if str(self.rungs[i]) not in self.state.get("done_rungs", []):
                self.current = i
                return [Request(t, self.rungs[i]) for t in self.finalists]
        return []

    def drop(self, trial: Trial) -> None:
        """A trial that failed: its strategy goes on with its other seeds, and leaves the race with none left (it
        is then neither ranked nor listed as stopped)."""
        left = [t for t in self.trials.get(trial.strategy, []) if t != trial]
        self.trials[trial.strategy] = left
        if not left and trial.strategy in self.alive:
            self.alive = [n for n in self.alive if n != trial.strategy]

    def _judge(self, i: int, results: Results) -> None:
        """The rung's scores (each strategy's mean over its seeds of the best val accuracy so far), who stops, and
        halving.json."""
        rung = self.rungs[i]
        for name in self.alive:
            best = [max((r[EPOCH.val_acc] for r in results[Request(t, rung)].metrics), default=0.0)
                    for t in self.trials.get(name, [])]  # fmt: skip
            self.scores.setdefault(name, {})[str(rung)] = sum(best) / len(best) if best else 0.0
        if i + 1 < len(self.rungs):
            survivors = halving_survivors(
                {n: self.scores[n][str(rung)] for n in self.alive}, self.carried, halving_keep(self.entrants, i + 1)
            )
            for name in (n for n in self.alive if n not in survivors):
                self.stopped[name] = {"epoch": rung, "val_acc": self.scores[name][str(rung)], "rung": i + 1}
                if not self.quiet:
                    print(f"[halving] {name} stops after epoch {rung} "
                          f"(best val acc {self.scores[name][str(rung)]:.2%})", flush=True)  # fmt: skip
            self.alive = survivors
        self.state = {"rungs": self.rungs, "entrants": self.entrants, "carried": self.carried, "alive": self.alive,
                      "stopped": self.stopped, "scores": self.scores,
                      "done_rungs": [*self.state.get("done_rungs", []), str(rung)]}  # fmt: skip
        if self.log is not None:
            write_text_atomic(self.log, json.dumps(self.state, indent=2))
