"""The advisor's probes on pooled features (numpy): the ridge linear probe with leave-one-out strength, k-NN."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from thawline.comparing.logme import thin_svd

if TYPE_CHECKING:
    import torch



KNN_K = 10
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge strength / N


# ---- probes on pooled features ------------------------------------------------------------------------------


@dataclass
class ProbeFit:
    acc: float  # val accuracy
    ridge: float  # the chosen ridge strength, as a multiple of N
    loo_acc: float  # its leave-one-out train accuracy
    weight: np.ndarray  # (D, K) on raw (unstandardised) features, scaled to logits
    bias: np.ndarray  # (K,)


def linear_probe(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray, n_classes: int) -> ProbeFit:
    """Ridge regression onto one-hot targets (a ridge classifier) on standardised features, in closed form.

    One thin SVD of the centred train features gives the fit for every ridge strength; the strength is the one
    with the best leave-one-out train accuracy (exact for ridge: LOO prediction = (fit - h_ii y_i) / (1 - h_ii)).
    The weights come back scaled by the temperature that minimises train cross-entropy, so they make a usable
    classifier head (the gradient profile starts from it)."""
    mu = xtr.mean(0)
    sd = xtr.std(0) + 1e-6
    x = (xtr - mu) / sd
    n = len(x)
    onehot = np.eye(n_classes)[ytr]
    ybar = onehot.mean(0)
    u, s, vt = thin_svd(x)
    uy = u.T @ (onehot - ybar)  # (k, K)
    u2 = u**2
    best: tuple[float, float] | None = None
    for mult in RIDGE_GRID:
        shrink = s**2 / (s**2 + mult * n)
        fitted = u @ (shrink[:, None] * uy) + ybar
        h = 1.0 / n + u2 @ shrink
        loo = (fitted - h[:, None] * onehot) / np.maximum(1 - h, 1e-9)[:, None]
        acc = float((loo.argmax(1) == ytr).mean())
        if best is None or acc > best[1] + 1e-12:
            best = (mult, acc)
    assert best is not None
    mult, loo_acc = best
    w = vt.T @ ((s / (s**2 + mult * n))[:, None] * uy)  # (D, K) on standardised features
    scores = x @ w + ybar
    temp = _temperature(scores, ytr)
    acc = float(((((xva - mu) / sd) @ w + ybar).argmax(1) == yva).mean())
    weight = temp * w / sd[:, None]
    bias = temp * (ybar - (mu / sd) @ w)
    return ProbeFit(acc, mult, loo_acc, weight.astype(np.float32), bias.astype(np.float32))


def _temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """The factor T (log grid, 1..1000) for which softmax(T * scores) has the lowest mean cross-entropy."""
    best_t, best_loss = 1.0, math.inf
    for t in np.geomspace(1, 1000, 31):
        z = t * scores
        z = z - z.max(1, keepdims=True)
        loss = float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), labels]))
        if loss < best_loss:
            best_t, best_loss = float(t), loss
    return best_t


def knn_accuracy(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray, k: int = KNN_K) -> float:
    """Cosine k-NN on train-mean-centred features; majority vote, ties broken by summed similarity."""
    import torch

    mu = xtr.mean(0)

    def unit(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy((a - mu).astype(np.float32))
        return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)

    a, b = unit(xtr), unit(xva)
    k = min(k, len(a))
    n_classes = int(max(ytr.max(), yva.max())) + 1
    labels = torch.from_numpy(ytr.astype(np.int64))
    correct = 0
    for start in range(0, len(b), 1024):
        sims, idx = (b[start : start + 1024] @ a.T).topk(k, dim=1)
        votes = torch.zeros(len(idx), n_classes).scatter_add_(1, labels[idx], 1 + 1e-3 * sims)
        correct += int((votes.argmax(1).numpy() == yva[start : start + 1024]).sum())
    return correct / len(b)
