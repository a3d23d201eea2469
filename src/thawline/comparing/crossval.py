"""A cross-validated comparison (`compare --folds K [--race]`): trials -> `FoldSchedule` -> executor -> answer.

Train and val are pooled and cut into K folds by file content (`data/folds.py`); each strategy trains once per
fold, validated on that fold (OUT/<strategy>/fold-<i>), so every pooled image gets one out-of-fold prediction per
strategy, with its full class probabilities (each run's probabilities.npz). The folds run one after another, every
strategy still in the race on each; with `race`, after each fold a strategy clearly behind stops (the rule:
`report.crossval.race_drops`), recorded in race.json. The answer reads the finalists' out-of-fold predictions:
the ranking by out-of-fold accuracy with intervals, the tests against the winner (McNemar on the pooled images and
the corrected resampled t-test over the folds, both Holm-adjusted), and Caruana's ensemble selection over the
strategies, a strategy's member being the mean of its K fold models. The test split is touched once, at the end:
each member's and the answer's test accuracy, never used to choose.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thawline.comparing.schedulers import Results
from thawline.comparing.trials import Request, Trial
from thawline.core.atomic import write_bytes_atomic, write_text_atomic
from thawline.core.runformat import FOLDS_CSV, OOF_NPZ, PROBABILITIES, ROW, SUMMARY
from thawline.data.fingerprint import relative
from thawline.data.names import folder_name
from thawline.report.crossval import (
    MIN_RACE_FOLDS,
    Drop,
    answer_line,
    corrected_t_test,
    ensemble_selection,
    parsimonious_pick,
    race_drops,
    training_cost,
    weighted_probs,
)
from thawline.report.probabilities import SplitProbabilities, read_probabilities
from thawline.report.ranking import rank, row_from_summary
from thawline.report.uncertainty import ALPHA, bootstrap_interval, fmt_p, holm, mcnemar
from thawline.training.folds import FoldedData
from thawline.training.run_state import RunResult


def fold_probabilities(run: RunResult, split: str = "val") -> SplitProbabilities:
    return read_probabilities(run.run_dir / PROBABILITIES)[split]


def fold_correctness(run: RunResult) -> np.ndarray:
    """A fold run's 0/1 correctness on its fold's images (its val split), from its probabilities."""
    val = fold_probabilities(run)
    return (val.probs.argmax(axis=1) == val.labels).astype(np.int64)


class FoldSchedule:
    """The folds one after another: every strategy still in the race trains fold f (to its whole budget), then,
    with `race`, `race_drops` decides who stops before fold f+1. No strategy stops after the last fold (it would
    save nothing). The decisions are a function of the folds' results alone, so a resumed comparison, whose
    finished runs are read back, replays the same race. `log`: race.json after each fold (None: nowhere)."""

    def __init__(
        self,
        names: list[str],
        k: int,
        seed: int,
        *,
        race: bool,
        correctness: Callable[[RunResult], np.ndarray] = fold_correctness,
        log: Path | None = None,
        quiet: bool = True,
    ) -> None:
        self.names, self.k, self.seed, self.race = list(names), k, seed, race
        self.correctness, self.log, self.quiet = correctness, log, quiet
        self.alive: list[str] = list(names)
        self.stopped: dict[str, Drop] = {}
        self.fold_correct: dict[str, list[np.ndarray]] = {n: [] for n in names}
        self.current: int | None = None

    def trial(self, name: str, fold: int) -> Trial:
        return Trial(name, None, self.seed, fold)

    @property
    def finalists(self) -> list[Trial]:
        return [self.trial(n, f) for n in self.alive for f in range(self.k)]

    def next(self, results: Results) -> list[Request]:
        if self.current is not None:
            self._judge(self.current, results)
        fold = 0 if self.current is None else self.current + 1
        if fold >= self.k:
            return []
        self.current = fold
        return [Request(self.trial(n, fold)) for n in self.alive]

    def _judge(self, fold: int, results: Results) -> None:
        for name in self.alive:
            self.fold_correct[name].append(self.correctness(results[Request(self.trial(name, fold))]))
        if self.race and fold + 1 < self.k:
            for drop in race_drops(self.fold_correct, self.alive):
                self.stopped[drop.strategy] = drop
                if not self.quiet:
                    print(f"[race] {drop.strategy} stops after fold {drop.after_fold}: {drop.why}", flush=True)
            self.alive = [n for n in self.alive if n not in self.stopped]
        if self.log is not None:
            write_text_atomic(self.log, json.dumps(self.state(fold + 1), indent=2))

    def state(self, folds_seen: int) -> dict[str, Any]:
        """race.json: the folds seen, each strategy's accuracy per fold, who stopped after which fold and why."""
        return {
            "folds": self.k, "folds_seen": folds_seen, "race": self.race, "min_folds": MIN_RACE_FOLDS,
            "alive": self.alive,
            "fold_acc": {n: [round(float(c.mean()), 6) for c in cs] for n, cs in self.fold_correct.items()},
            "stopped": {n: {"after_fold": d.after_fold, "leader": d.leader, "acc": round(d.acc, 6),
                            "leader_acc": round(d.leader_acc, 6), "p_holm": d.p_holm, "why": d.why}
                        for n, d in self.stopped.items()},
        }  # fmt: skip


# ---- the answer ------------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One finalist strategy over its K folds: its out-of-fold probabilities (in the pool's order), the mean of its
    fold models' test probabilities, and its fold runs."""

    name: str
    oof: np.ndarray
    test: np.ndarray | None
    runs: list[RunResult]
    fold_acc: list[float]  # its accuracy on each fold's val images


def members(folded: FoldedData, schedule: FoldSchedule, results: Mapping[Request, RunResult]) -> dict[str, Member]:
    """Each finalist's out-of-fold probabilities: every pooled image placed by path from the fold whose val it was."""
    pool = folded.pool.splits["train"]
    index = {p: i for i, p in enumerate(pool.paths)}
    out: dict[str, Member] = {}
    for name in schedule.alive:
        runs = [results[Request(schedule.trial(name, f))] for f in range(folded.k)]
        oof = np.full((len(pool), len(folded.classes)), np.nan)
        tests, fold_acc = [], []
        for run in runs:
            probs = read_probabilities(run.run_dir / PROBABILITIES)
            oof[[index[p] for p in probs["val"].paths]] = probs["val"].probs
            fold_acc.append(accuracy(probs["val"].probs, probs["val"].labels))
            if "test" in probs:
                tests.append(probs["test"].probs)
        if np.isnan(oof).any():
            raise AssertionError(f"{name}: pooled images without an out-of-fold prediction")  # the folds cover all
        out[name] = Member(name, oof, np.mean(tests, axis=0) if tests else None, runs, fold_acc)
    return out


def pick_of(rows: list[dict[str, Any]], mem: Mapping[str, Member]) -> str:
    """The single strategy answered (`report.crossval.parsimonious_pick`): the cheapest to train of the leader and
    the strategies tied with it, the cost read from each one's first fold run."""
    return parsimonious_pick(rows, {n: training_cost(m.runs[0].summary or {}) for n, m in mem.items()})


def answer_of(
    mem: dict[str, Member], labels: np.ndarray, test_labels: np.ndarray | None, k: int, pick: str
) -> dict[str, Any]:
    """The delivered answer: Caruana's ensemble over the members on their out-of-fold probabilities when it is
    more accurate there than every single member, else the `pick` (`pick_of`); both evaluated on test once."""
    selection = ensemble_selection({n: m.oof for n, m in mem.items()}, labels)
    leader_acc = max(accuracy(m.oof, labels) for m in mem.values())
    single = {"strategy": pick, "oof_acc": round(accuracy(mem[pick].oof, labels), 6),
              "test_acc": test_accuracy({pick: 1.0}, mem, test_labels)}  # fmt: skip
    ensemble = len(selection.weights) > 1 and selection.accuracy > leader_acc
    weights = {n: round(w, 6) for n, w in selection.weights.items()} if ensemble else {pick: 1.0}
    return {
        "kind": "ensemble" if ensemble else "strategy",
        "members": weights,
        "oof_acc": round(selection.accuracy if ensemble else single["oof_acc"], 6),
        "test_acc": test_accuracy(weights, mem, test_labels),
        "forward_passes": k * len(weights),  # per image: every fold model of every member
        "runs": {n: [str(r.run_dir) for r in mem[n].runs] for n in weights},
        "single": single,
        "ensemble_selection": {
            "weights": {n: round(w, 6) for n, w in selection.weights.items()},
            "oof_acc": round(selection.accuracy, 6),
            "oof_log_loss": round(selection.log_loss, 6),
            "rounds": len(selection.trajectory),
        },  # fmt: skip
    }


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


def test_accuracy(weights: Mapping[str, float], mem: Mapping[str, Member], labels: np.ndarray | None) -> float | None:
    if labels is None or any(mem[n].test is None for n in weights):
        return None
    return round(accuracy(weighted_probs({n: mem[n].test for n in weights}, weights), labels), 6)


def crossval_rows(mem: dict[str, Member], labels: np.ndarray, test_labels: np.ndarray | None, k: int,
                  out_dir: Path) -> list[dict[str, Any]]:  # fmt: skip
    """The ranked table: per finalist its out-of-fold accuracy and interval, its spread over the folds, its member's
    test accuracy, train time summed over the folds, and its tests against the winner (Holm-adjusted): McNemar on
    the pooled images, the corrected t-test over the folds; tied unless both find it behind."""
    rows = []
    for name, m in mem.items():
        first = m.runs[0]
        row = row_from_summary(name, first.run_dir, first.summary or {})
        correct = (m.oof.argmax(axis=1) == labels).astype(np.int64)
        folds = m.fold_acc
        row.update({ROW.best_val_acc: None, ROW.val_acc_ci: None, ROW.oof_acc: round(float(correct.mean()), 6),
                    ROW.oof_acc_ci: bootstrap_interval(correct), ROW.folds_acc: spread(folds),
                    ROW.train_time_s: round(sum((r.summary or {}).get(SUMMARY.train_time_s) or 0.0 for r in m.runs), 2),
                    ROW.wall_time_s: round(sum((r.summary or {}).get(SUMMARY.wall_time_s) or 0.0 for r in m.runs), 2),
                    ROW.run_dir: str(out_dir / folder_name(name))})  # fmt: skip
        if m.test is not None and test_labels is not None:
            test_correct = (m.test.argmax(axis=1) == test_labels).astype(np.int64)
            row.update({ROW.test_acc: round(float(test_correct.mean()), 6),
                        ROW.test_acc_ci: bootstrap_interval(test_correct)})  # fmt: skip
        row["_correct"], row["_folds"] = correct, folds
        rows.append(row)
    rows = rank(rows)
    winner = rows[0]
    mcnemar_p = holm([mcnemar(winner["_correct"], r["_correct"]).p for r in rows[1:]])
    t_p = holm([corrected_t_test(winner["_folds"], r["_folds"], k).p for r in rows[1:]])
    for r, p_mc, p_t in zip(rows[1:], mcnemar_p, t_p, strict=True):
        r.update({ROW.p_vs_winner: p_mc, ROW.p_folds: p_t, ROW.tied: not (p_mc < ALPHA and p_t < ALPHA),
                  ROW.tie_split: "out-of-fold"})  # fmt: skip
    winner.update({ROW.p_vs_winner: None, ROW.p_folds: None, ROW.tied: None, ROW.tie_split: "out-of-fold"})
    for r in rows:
        del r["_correct"], r["_folds"]
    return rows


def spread(values: list[float]) -> list[float | int]:
    xs = np.asarray(values, dtype=float)
    return [round(float(xs.mean()), 6), round(float(xs.std(ddof=1)) if xs.size > 1 else 0.0, 6), int(xs.size)]


def verdict_lines(rows: list[dict[str, Any]], answer: dict[str, Any], stopped: dict[str, Drop]) -> list[str]:
    """The console lines after a cross-validated table: the leader against the runner-up, the single strategy picked,
    who the race stopped, and the delivered answer."""
    lines = []
    if len(rows) > 1:
        r = rows[1]
        verdict = "not significant (tied)" if r[ROW.tied] else "significant"
        lines.append(f"leader {rows[0][ROW.strategy]}, runner-up {r[ROW.strategy]}: out-of-fold acc "
                     f"{rows[0][ROW.oof_acc]:.2%} vs {r[ROW.oof_acc]:.2%}; McNemar p={fmt_p(r[ROW.p_vs_winner])}, "
                     f"corrected t-test over the folds p={fmt_p(r[ROW.p_folds])} (both Holm): {verdict}")  # fmt: skip
        lines.append(pick_line(rows, answer["single"]["strategy"]))
    if stopped:
        parts = [f"{n} after fold {d.after_fold} ({d.acc:.1%} vs {d.leader} {d.leader_acc:.1%})"
                 for n, d in sorted(stopped.items(), key=lambda kv: kv[1].after_fold)]  # fmt: skip
        lines.append("stopped by --race (not ranked): " + ", ".join(parts))
    lines.append(answer_line(answer))
    return lines


def pick_line(rows: list[dict[str, Any]], pick: str) -> str:
    tied = [r[ROW.strategy] for r in rows[1:] if r[ROW.tied]]
    leader = rows[0][ROW.strategy]
    if not tied:
        return f"pick: {pick} (no strategy is tied with it)"
    why = "the leader" if pick == leader else f"tied with the leader {leader}"
    return (f"pick: {pick}, {why}; the cheapest to train of the {len(tied) + 1} strategies the tests cannot tell "
            f"apart ({', '.join([leader, *tied])})")  # fmt: skip


def write_folds_csv(out_dir: Path, folded: FoldedData) -> None:
    """folds.csv: every pooled file's fold (1-based), path relative to the data folder, and class."""
    found = folded.pool.discovered
    files = found.splits["train"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["fold", "path", "label"])
    for fold, path, label in zip(folded.folds, files.paths, files.labels, strict=True):
        w.writerow([fold + 1, relative(path, found.root), found.classes[label]])
    write_text_atomic(out_dir / FOLDS_CSV, buf.getvalue())


def write_oof(out_dir: Path, folded: FoldedData, mem: dict[str, Member], answer: dict[str, Any]) -> None:
    """oof.npz: the pool's paths and labels, each finalist's out-of-fold probabilities, and on test its member's
    and the answer's probabilities."""
    pool, test = folded.pool.splits["train"], folded.pool.splits.get("test")
    arrays: dict[str, np.ndarray] = {"paths": np.array(pool.paths, dtype=np.str_), "labels": pool.labels,
                                     "members": np.array(list(mem), dtype=np.str_)}  # fmt: skip
    for i, m in enumerate(mem.values()):
        arrays[f"oof_{i}"] = m.oof.astype(np.float32)
        if m.test is not None:
            arrays[f"test_{i}"] = m.test.astype(np.float32)
    if test is not None and all(mem[n].test is not None for n in answer["members"]):
        arrays["test_paths"], arrays["test_labels"] = np.array(test.paths, dtype=np.str_), test.labels
        arrays["test_answer"] = weighted_probs({n: mem[n].test for n in answer["members"]}, answer["members"])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes_atomic(out_dir / OOF_NPZ, buf.getvalue())
