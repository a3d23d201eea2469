"""The statistics of a cross-validated comparison (`compare --folds K`), no torch:

    corrected_t_test(leader, other, k)   # Nadeau & Bengio's corrected resampled t-test over the folds' accuracies
    race_drops(fold_correct, alive, ...) # who the race stops after a fold, and why
    ensemble_selection(probs, labels)    # Caruana et al. 2004: greedy forward selection with replacement
    parsimonious_pick(rows, costs)       # the cheapest to train of the strategies tied with the leader

Why the corrected resampled t-test (Nadeau & Bengio 2003) over the folds rather than the Bayesian correlated t-test
(Benavoli et al. 2017): both correct the variance of the mean difference for the overlap of the folds' training
sets (the naive paired t-test over folds rejects far too often); the Bayesian test's decision needs a region of
practical equivalence, a width to choose, while the corrected test gives one p-value per comparison that Holm's
procedure adjusts exactly as the plain compare's McNemar tests are, with no extra threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from thawline.core.runformat import ROW, SUMMARY
from thawline.report.uncertainty import ALPHA, holm, mcnemar


@dataclass(frozen=True)
class TTest:
    mean_diff: float  # leader's mean fold accuracy minus the other's
    t: float
    p: float  # one-sided: the leader is better


def corrected_t_test(leader: Sequence[float], other: Sequence[float], k: int) -> TTest:
    """Nadeau & Bengio's corrected resampled t-test on paired fold accuracies (same folds, same order) of a K-fold
    cross-validation: t = mean(d) / sqrt((1/n + n_val/n_train) * var(d)) with n_val/n_train = 1/(K-1) and n - 1
    degrees of freedom (n folds seen); one-sided p that the leader is better. Equal differences on every fold give
    p 0 when the leader is ahead and 1 otherwise."""
    from scipy import stats

    d = np.asarray(leader, dtype=float) - np.asarray(other, dtype=float)
    n = len(d)
    if n < 2:
        raise ValueError("the corrected t-test needs two folds or more")
    mean, var = float(d.mean()), float(d.var(ddof=1))
    if var == 0.0:
        return TTest(mean, math.copysign(math.inf, mean) if mean else 0.0, 0.0 if mean > 0 else 1.0)
    t = mean / math.sqrt((1 / n + 1 / (k - 1)) * var)
    return TTest(mean, t, float(stats.t.sf(t, n - 1)))


# ---- racing --------------------------------------------------------------------------------------------------

# No strategy stops before this many folds: one fold is one val split, the evidence the plain compare already has.
MIN_RACE_FOLDS = 2


@dataclass(frozen=True)
class Drop:
    strategy: str
    after_fold: int  # folds seen (1-based)
    leader: str
    acc: float  # its accuracy on the out-of-fold images seen so far
    leader_acc: float
    p_holm: float  # McNemar on those images, Holm-adjusted over the challengers

    @property
    def why(self) -> str:
        return (f"behind {self.leader} on each of the {self.after_fold} folds and over their images "
                f"({self.acc:.1%} vs {self.leader_acc:.1%}, McNemar p={self.p_holm:.3g} after Holm)")  # fmt: skip


def race_drops(fold_correct: Mapping[str, Sequence[np.ndarray]], alive: Sequence[str]) -> list[Drop]:
    """Who stops after the folds seen so far (`fold_correct[strategy][f]`: its 0/1 correctness on fold f's images,
    every alive strategy on the same folds). The leader is the best on the out-of-fold images seen; a challenger
    stops when, after at least MIN_RACE_FOLDS folds, (a) McNemar on those images (paired by image), Holm-adjusted
    over the challengers, puts it behind at p < 0.05, and (b) it is behind the leader on every fold seen. (a)
    bounds the luck of which images were drawn, (b) the luck of one training run, which McNemar does not see."""
    folds = min(len(fold_correct[n]) for n in alive) if alive else 0
    if folds < MIN_RACE_FOLDS or len(alive) < 2:
        return []
    pooled = {n: np.concatenate([np.asarray(c) for c in fold_correct[n][:folds]]) for n in alive}
    acc = {n: float(pooled[n].mean()) for n in alive}
    leader = max(alive, key=lambda n: (acc[n], -list(alive).index(n)))
    others = [n for n in alive if n != leader]
    raw = [mcnemar(pooled[leader], pooled[n]).p for n in others]
    adjusted = holm(raw)
    drops = []
    for name, p in zip(others, adjusted, strict=True):
        behind_each = all(np.mean(fold_correct[leader][f]) > np.mean(fold_correct[name][f]) for f in range(folds))
        if p < ALPHA and acc[name] < acc[leader] and behind_each:
            drops.append(Drop(name, folds, leader, acc[name], acc[leader], p))
    return drops


# ---- ensemble selection ----------------------------------------------------------------------------------------

ROUNDS = 25  # AutoGluon's ensemble_size: weights are multiples of 1/25


@dataclass(frozen=True)
class Selection:
    weights: dict[str, float]  # member -> weight (summing to 1), in the order first chosen
    accuracy: float  # the weighted average's accuracy on the selection's images
    log_loss: float
    trajectory: list[tuple[str, float]]  # (member added, accuracy after it) per round


def _score(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    acc = float((probs.argmax(axis=1) == labels).mean())
    loss = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return acc, loss


def ensemble_selection(probs: Mapping[str, np.ndarray], labels: np.ndarray, rounds: int = ROUNDS) -> Selection:
    """Caruana et al. 2004 greedy forward selection with replacement on out-of-fold probabilities: each round adds
    the member whose addition gives the best accuracy (ties: lower log loss, then the given order); the ensemble
    kept is the first round with the best (accuracy, then log loss) of all rounds (AutoGluon's `use_best`). The
    first round picks the best single member, so the selection is never worse than it on these images."""
    names = list(probs)
    labels = np.asarray(labels)
    total = np.zeros_like(next(iter(probs.values())), dtype=np.float64)
    counts: dict[str, int] = {}
    trajectory: list[tuple[str, float]] = []
    best: tuple[tuple[float, float], dict[str, int]] | None = None
    for r in range(1, rounds + 1):
        scored = [(_score((total + probs[n]) / r, labels), -i, n) for i, n in enumerate(names)]
        (acc, loss), _, pick = max(scored, key=lambda s: (s[0][0], -s[0][1], s[1]))
        total += probs[pick]
        counts[pick] = counts.get(pick, 0) + 1
        trajectory.append((pick, acc))
        if best is None or (acc, -loss) > (best[0][0], -best[0][1]):
            best = ((acc, loss), dict(counts))
    assert best is not None
    (acc, loss), chosen = best
    n = sum(chosen.values())
    return Selection({m: c / n for m, c in chosen.items()}, acc, loss, trajectory)


def weighted_probs(members: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """The ensemble's probabilities: the weighted mean of its members'."""
    return sum(w * np.asarray(members[m], dtype=np.float64) for m, w in weights.items())  # type: ignore[return-value]


def answer_line(answer: dict[str, Any]) -> str:
    test = f", test {answer['test_acc']:.2%}" if answer.get("test_acc") is not None else ""
    single = answer["single"]
    if answer["kind"] == "ensemble":
        parts = " + ".join(f"{n} {w:.2f}" for n, w in answer["members"].items())
        single_test = f", test {single['test_acc']:.2%}" if single.get("test_acc") is not None else ""
        return (f"answer: ensemble {parts} (out-of-fold acc {answer['oof_acc']:.2%}{test}; "
                f"{single['strategy']} alone {single['oof_acc']:.2%}{single_test}); "
                f"{answer['forward_passes']} forward passes an image")  # fmt: skip
    return (
        f"answer: {single['strategy']} (out-of-fold acc {answer['oof_acc']:.2%}{test}; no ensemble of the "
        f"strategies beat it out of fold); {answer['forward_passes']} forward passes an image (its fold models)"
    )


def training_cost(summary: Mapping[str, Any]) -> float:
    """What a run's recipe trains, as trainable-parameter epochs: each phase's trainable parameters times its epochs
    (a pure function of the strategy and the model, unlike a wall time, so the pick never depends on machine load)."""
    phases = summary.get(SUMMARY.phases) or []
    params = summary.get(SUMMARY.trainable_params) or []
    return float(sum(int(n) * int(p.get("epochs", 0)) for n, p in zip(params, phases, strict=False)))


def parsimonious_pick(rows: Sequence[Mapping[str, Any]], costs: Mapping[str, float]) -> str:
    """The single strategy a cross-validated comparison answers: of the leader (rows[0], best out-of-fold accuracy)
    and the strategies tied with it (`tied`: its tests cannot put them behind), the cheapest to train; equal costs
    go to the higher rank. The one-standard-error rule's reasoning (Breiman et al. 1984; Hastie et al., Elements of
    Statistical Learning 7.10): among candidates the evidence cannot tell apart, prefer the simplest, here the one
    that trains least, which is also what the user pays for. No threshold of its own: `tied` is the table's."""
    candidates = [rows[0], *(r for r in rows[1:] if r.get(ROW.tied))]
    return min(candidates, key=lambda r: (costs[r[ROW.strategy]], candidates.index(r)))[ROW.strategy]
