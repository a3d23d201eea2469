"""How well a predicted ranking of strategies matches the measured one, and the best any prediction could do on a
test set of a given size. numpy only.

    kendall_tau_b(predicted, scores)    # Kendall's tau-b of a predicted order against measured scores (ties count)
    oracle_tau(correct)                 # the mean tau of the true ranking against bootstrap remeasurements
"""

from __future__ import annotations

import itertools

import numpy as np


def kendall_tau_b(predicted: list[str], scores: dict[str, float]) -> float:
    """Kendall's tau-b between a predicted order (best first, no ties) and measured scores (higher is better, ties
    possible), over the strategies both name; 0 when no pair is ordered."""
    names = [n for n in predicted if n in scores]
    rank = {n: -i for i, n in enumerate(names)}  # higher is better, as the scores
    concordant = discordant = ties_measured = 0
    for a, b in itertools.combinations(names, 2):
        dp = (rank[a] > rank[b]) - (rank[a] < rank[b])
        dm = (scores[a] > scores[b]) - (scores[a] < scores[b])
        if dm == 0:
            ties_measured += 1
        elif dp == dm:
            concordant += 1
        else:
            discordant += 1
    pairs = len(names) * (len(names) - 1) // 2
    denom = np.sqrt(pairs * (pairs - ties_measured))
    return float((concordant - discordant) / denom) if denom > 0 else 0.0


def oracle_tau(correct: dict[str, np.ndarray], resamples: int = 1000, seed: int = 0) -> float:
    """The mean tau a predictor that knew the true ranking would score against a test set of this size, from each
    strategy's per-image correctness (0/1, the same images in the same order for all): the measured ranking plays
    the truth, and each bootstrap resample of the images (the same for every strategy, so their errors stay
    paired) a remeasurement. An upper bound for any prediction: the resample gaps are noisier than the truth's, and
    the measured gaps (the stand-in truth) already larger than the true."""
    names = list(correct)
    matrix = np.stack([correct[n] for n in names]).astype(np.float64)
    measured = dict(zip(names, matrix.mean(1).tolist(), strict=True))
    truth = sorted(names, key=lambda n: -measured[n])
    rng = np.random.default_rng(seed)
    n_images = matrix.shape[1]
    taus = [kendall_tau_b(truth, dict(zip(names, matrix[:, rng.integers(0, n_images, n_images)].mean(1).tolist(),
                                              strict=True)))
            for _ in range(resamples)]  # fmt: skip
    return float(np.mean(taus))


__all__ = ["kendall_tau_b", "oracle_tau"]
