"""LogME: the log maximum evidence of a linear model on frozen features (You et al., ICML 2021).

"LogME: Practical Assessment of Pre-trained Models for Transfer Learning". For features F (N x D) and one target
column y (N; for classification the one-hot indicator of one class), the Bayesian linear model

    y = F w + e,   w ~ N(0, 1/alpha I_D),   e ~ N(0, 1/beta I_N)

has the evidence (marginal likelihood)

    L(alpha, beta) = D/2 log alpha + N/2 log beta - N/2 log 2pi - beta/2 ||F m - y||^2 - alpha/2 ||m||^2
                     - 1/2 log |A|,     A = alpha I + beta F^T F,   m = beta A^-1 F^T y.

LogME maximises L over alpha and beta by the paper's fixed-point iteration

    gamma = sum_i beta s_i / (alpha + beta s_i),   alpha <- gamma / ||m||^2,   beta <- (N - gamma) / ||F m - y||^2

where s_i are the eigenvalues of F^T F. The SVD trick: with the thin SVD F = U S V^T (k = min(N, D) singular
values, s = S^2) and x = U^T y, every term is a sum over k numbers, so an iteration costs O(k), not O(D^3):

    ||m||^2 = sum s x^2 / (t + s)^2,   ||F m - y||^2 = sum (t x / (t + s))^2 + (||y||^2 - ||x||^2),   t = alpha/beta
    log |A| = sum log(alpha + beta s) + (D - k) log alpha          (the D - k zero eigenvalues of F^T F)

The score is the mean over classes of the maximised L divided by N; larger means the features explain the labels
with a simpler linear model. The (D - k) log alpha term makes the SVD path equal the direct D x D formula when
N < D (the authors' fixed-point code sums log(alpha + beta s) over the k non-zero values only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-5  # keeps the alpha and beta updates finite when ||m|| or the residual vanishes (as the reference code)


@dataclass(frozen=True)
class Spectrum:
    """The thin SVD of a feature matrix, shared by every class's evidence."""

    u: np.ndarray  # N x k left singular vectors of the non-zero singular values
    s: np.ndarray  # k eigenvalues of F^T F (squared singular values), > 0
    n: int
    d: int


def thin_svd(x: np.ndarray, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, singular values, V^T) of x (N x D) for the singular values whose square exceeds rtol times the largest,
    from the eigendecomposition of the smaller Gram matrix in float64 (torch's eigh: with torch loaded, numpy's
    LAPACK ran 5-10x slower here on the 2-core machine)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    tall = t.shape[0] >= t.shape[1]
    evals, vecs = torch.linalg.eigh(t.T @ t if tall else t @ t.T)
    evals, vecs = evals.flip(0), vecs.flip(1)  # largest first
    keep = evals > max(float(evals[0]), 0.0) * rtol if evals.numel() else evals > 0
    s = evals[keep].sqrt()
    vecs = vecs[:, keep]
    if tall:
        v, u = vecs, (t @ vecs) / s
    else:
        u, v = vecs, (t.T @ vecs) / s
    return u.numpy(), s.numpy(), v.T.contiguous().numpy()


def spectrum(features: np.ndarray) -> Spectrum:
    f = np.asarray(features, dtype=np.float64)
    u, sv, _ = thin_svd(f)
    return Spectrum(u, sv**2, *f.shape)


def _project(sp: Spectrum, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(x = U^T y, the squared norm of the part of y outside F's column space)."""
    y = np.asarray(y, dtype=np.float64)
    x = sp.u.T @ y
    return x, max(float(y @ y) - float(x @ x), 0.0)


def _terms(sp: Spectrum, x: np.ndarray, rest: float, alpha: float, beta: float) -> tuple[float, float, float]:
    """(gamma, ||m||^2, ||F m - y||^2) at (alpha, beta), from the spectrum and y's projection."""
    t = alpha / beta
    s = sp.s
    gamma = float(np.sum(s / (s + t)))
    m2 = float(np.sum(s * x**2 / (t + s) ** 2))
    res2 = float(np.sum((t * x / (t + s)) ** 2)) + rest
    return gamma, m2, res2


def _evidence(sp: Spectrum, x: np.ndarray, rest: float, alpha: float, beta: float) -> float:
    _, m2, res2 = _terms(sp, x, rest, alpha, beta)
    n, d, k = sp.n, sp.d, len(sp.s)
    log_det = float(np.sum(np.log(alpha + beta * sp.s))) + (d - k) * np.log(alpha)
    return float(
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - log_det / 2
    )


def evidence(sp: Spectrum, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) (not divided by N), by the SVD path."""
    return _evidence(sp, *_project(sp, y), alpha, beta)


def maximize(sp: Spectrum, y: np.ndarray, max_iter: int = 100, tol: float = 1e-4) -> tuple[float, float, float]:
    """(evidence / N, alpha, beta) at the fixed point of the paper's alpha/beta updates, starting at 1, 1."""
    x, rest = _project(sp, y)
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        t = alpha / beta
        gamma, m2, res2 = _terms(sp, x, rest, alpha, beta)
        alpha = gamma / (m2 + EPS)
        beta = max(sp.n - gamma, EPS) / (res2 + EPS)
        if abs(alpha / beta - t) / t < tol:
            break
    return _evidence(sp, x, rest, alpha, beta) / sp.n, alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of classification labels (ints 0..C-1) given features (N x D): the mean per-class evidence / N."""
    labels = np.asarray(labels)
    sp = spectrum(features)
    scores = [maximize(sp, (labels == c).astype(np.float64))[0] for c in np.unique(labels)]
    return float(np.mean(scores))
