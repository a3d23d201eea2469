"""`compare --halving` replayed from a full comparison's per-epoch metrics, without training.

    curves = read_curves(compare_dir, strategies, epochs)   # each strategy's metrics.jsonl rows, first `epochs`
    simulate_halving(curves, epochs, carried)               # the race's winner, stops and share of the epochs' time
    halving_floor(curves, pick, carried)                    # the least any whole-epoch race spends and still names pick

A halving survivor resumes bit-identical to the uninterrupted run, so a strategy's best val accuracy at a rung is the
full run's best over its first `rung` epochs: the replay's survivors, stops and winner are the real race's (the
benchmarks score halving and `--advise` on a task suite this way). No torch: it reads run files.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from thawline.comparing.schedulers import halving_keep, halving_rungs, halving_survivors
from thawline.core.runformat import EPOCH, METRICS_FILE
from thawline.report.ranking import run_subdir
from thawline.report.runfiles import read_metrics

Curves = Mapping[str, list[dict[str, Any]]]  # strategy -> its metrics.jsonl rows (val_acc and seconds read)


def first_epochs(curves: Curves, epochs: int) -> dict[str, list[dict[str, Any]]] | None:
    """Each strategy's first `epochs` rows; None when one has fewer (a run stopped earlier)."""
    cut = {n: rows[:epochs] for n, rows in curves.items()}
    return cut if all(len(rows) == epochs for rows in cut.values()) else None


def read_curves(compare_dir: str | Path, strategies: list[str], epochs: int) -> dict[str, list[dict[str, Any]]] | None:
    """Each strategy's first `epochs` metrics.jsonl rows from a compare folder's run folders; None when one stopped
    earlier (a halving race's stopped strategies, an unfinished run)."""
    folder = Path(compare_dir)
    return first_epochs({n: read_metrics(folder / run_subdir(n) / METRICS_FILE) for n in strategies}, epochs)


def _seconds(rows: list[dict[str, Any]]) -> float:
    return sum(r[EPOCH.seconds] for r in rows)


def simulate_halving(curves: Curves, epochs: int, carried: str, left_out: Collection[str] = ()) -> dict[str, Any]:
    """`compare --halving`'s outcome on `curves` (a full comparison's per-epoch rows of every strategy, `epochs`
    each), carrying `carried` to the end (what a real race in that folder carries: `halving_carried`). `left_out`:
    the strategies `compare --advise` leaves out before the race; entrants all the same, as in the real race, and
    their epochs count in the time share's whole.

    Returns {"winner", "stopped" ({strategy: epoch}), "rungs", "carried", "final_val" (the last survivors' best val
    accuracy), "left_out", "epoch_share"}. The winner is exact; the time share is the race's share of the epochs'
    own seconds (training and validation; start-up and the test pass left out). An exact tie in best val accuracy
    among the last survivors goes to the one with less time, as in `compare`: the one part that can differ from a
    real race, whose times are its own."""
    strategies = list(curves)
    entered = [n for n in strategies if n not in left_out]
    rungs = halving_rungs(epochs, len(strategies))
    alive, stopped = entered, {}
    for i, rung in enumerate(rungs[:-1], start=1):
        best_so_far = {n: max(r[EPOCH.val_acc] for r in curves[n][:rung]) for n in alive}
        survivors = halving_survivors(best_so_far, carried, halving_keep(len(strategies), i))
        stopped.update({n: rung for n in alive if n not in survivors})
        alive = survivors
    final = {n: max(r[EPOCH.val_acc] for r in curves[n]) for n in alive}
    winner = min(alive, key=lambda n: (-final[n], _seconds(curves[n])))
    spent = sum(_seconds(curves[n][: stopped.get(n, epochs)]) for n in entered)
    total = sum(_seconds(curves[n]) for n in strategies)
    return {"winner": winner, "stopped": stopped, "rungs": rungs, "carried": carried, "final_val": final,
            "left_out": sorted(left_out), "epoch_share": round(spent / total, 4)}  # fmt: skip


def halving_floor(curves: Curves, pick: str, carried: str) -> dict[str, Any]:
    """What no halving race with whole-epoch rungs can beat on `curves` while it still ends with `pick` (the full
    comparison's winner) and carries `carried`: both train every epoch, every other strategy at least its first
    ("floor_share": the least share of the strategy-epochs' time, as `simulate_halving`'s). And "pick_rank_by_epoch":
    the pick's rank by best val accuracy so far after each epoch; a race can stop the others early only from the
    epoch at which the pick ranks near the top."""
    total = sum(r[EPOCH.seconds] for rows in curves.values() for r in rows)
    floor = sum(_seconds(rows) if n in (pick, carried) else rows[0][EPOCH.seconds] for n, rows in curves.items())
    ranks = []
    for epoch in range(1, len(curves[pick]) + 1):
        best = {n: max(r[EPOCH.val_acc] for r in rows[:epoch]) for n, rows in curves.items()}
        ranks.append(1 + sum(best[n] > best[pick] for n in curves))
    return {"floor_share": round(floor / total, 4), "pick_rank_by_epoch": ranks}


__all__ = ["first_epochs", "halving_floor", "read_curves", "simulate_halving"]
