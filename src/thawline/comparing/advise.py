"""Predict which fine-tuning strategy will win, in seconds and without training: `thawline advise`.

One pass of the frozen pretrained backbone (eval mode, no grad) over a stratified sample of train and val (by
default up to 2,000 and 1,000 images, decoded by the same decode-once cache and normalised as training does)
collects the globally average-pooled output of every stage of the model's stage map. On each depth:

- a linear probe: multinomial logistic regression on standardised features (L2 strength picked on a 20% hold-out
  of the train sample, refitted on all of it), val accuracy;
- k-NN: cosine similarity on train-mean-centred features, k = 10 majority vote, val accuracy;
- LogME (You et al., ICML 2021; `thawline.logme`) on the train sample.

Then a few batches of training loss through the whole model, its head set to the linear probe fitted on the
classifier's input, give the relative gradient norm ||g|| / ||w|| of each stage (Auto-RGN, Lee et al., ICLR 2023).

The ranking of the seven default strategies is a score per strategy: a prior (the order that fits the 13-task
suite's measured test accuracies best: gradual, layer-wise, head-only, full, partial, two-phase, scratch), plus
these rules at a quarter of the sizes in the code (RULE_WEIGHT: on the suite they only earned their place as
tie-breakers), each recorded as a reason beside the strategies it moved:

1. Top probe (linear-probe val accuracy on the last stage's features). >= 95%: a new head alone gets almost
   everything at the lowest cost (head-only up, full and scratch down). < 75%: the backbone must adapt (head-only
   down; full, layer-wise, two-phase up). Within 15 points of the majority class at every depth: the pretrained
   features barely help (scratch and full up, head-only down).
2. Gap: an earlier stage's probe beats the top by more than the noise (2 points, or two standard errors of the
   top probe's val accuracy when that is larger): the top stages are too specific to the pretraining task; thaw
   them (head-only down by 5 points plus the gap, partial up most, full and layer-wise up). The probe still rising
   at the top by more than the noise: the top features fit (head-only up). A gap within the noise is reported,
   and moves nothing.
3. Data size (median train images per class in the whole folder). < 30: training every layer overfits (full and
   scratch down, head-only up). < 1000: scratch down. >= 1000: full fine-tuning can use the data (full, two-phase,
   scratch up, head-only down).
4. LogME peaking below the top stage backs rule 2 (partial up, head-only down); highest at the top backs head-only.
5. Gradient pressure: >= 70% of the body's relative gradient norm (stage shares summed) in its lower half means
   the loss asks for changes early in the network (an input-level shift in Lee et al.'s terms): full and two-phase
   up, head-only and partial down. >= 50% in the top quarter: the change belongs at the top (partial, layer-wise
   up). A flat profile puts 50% in the lower half; lite0's early stages have small weights, and it put 63-65% there
   on Fashion-MNIST and on synthetic shapes alike, so the threshold sits above that.

Ties go to the cheaper strategy. The recommended `partial` freezes every stage up to and including the deepest one
whose probe is within half a point of the best (at least one stage trains; with < 30 images per class at least 2/3
of the stages stay frozen). LRs: the body LR is 1e-4, 3e-5 when the top probe is >= 90% (the features already fit),
3e-4 when it is < 60% or the gap is >= 5 points; partial trains at 3x the body LR, a head at 1e-3; `layer_decay`
is the per-stage ratio of a log-linear fit to the gradient profile (Auto-RGN's LR-proportional-to-RGN, as the
strategies' geometric decay), clipped to [0.5, 1].

`compare --advise` leaves out, before any training, the strategies scored more than FAR_BEHIND below the best one
compared (`far_behind`): in practice scratch, unless a rule lifted it.

`advise(config)` returns an `Advice` and writes advise.json, advise_probes.png and advise.html into the out folder;
`advice_html(doc, figure)` renders advise.json's dict as an HTML section for a report.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from thawline.config import PLACE_OPTIONS, TrainConfig, atomic_write_text, option_flags
from thawline.errors import ThawlineError
from thawline.logme import logme, thin_svd

if TYPE_CHECKING:
    import torch

    from thawline.prepare import PreparedData, RunSetup, SplitData

ADVICE_JSON = "advise.json"
ADVICE_HTML = "advise.html"
FIGURE = "advise_probes.png"
ADVICE_DIR = "advise"  # `compare --advise` writes its prediction into this sub-folder, before any training
SKIPPED_JSON = "skipped.json"  # `compare --advise`: {strategy: why} of the strategies it left out (far_behind)
FORMAT = 1

MAX_TRAIN = 2000
MAX_VAL = 1000
GRAD_BATCHES = 4
KNN_K = 10
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge strength / N

# The seven default strategies, cheapest first (ties in score go to the cheaper one).
STRATEGY_ORDER = ("head-only", "partial", "two-phase", "layer-wise", "gradual", "full", "scratch")
# Prior: the one order of the strategies that fits the measured test accuracies of the 13-task suite best (mean
# Kendall tau 0.56 over the 13; benchmarks/advise_suite.py). Chosen leave-one-task-out it was this order on 12 of
# the 13 tasks, and the same with full before head-only on the other.
PRIOR = {
    "gradual": 0.60,
    "layer-wise": 0.57,
    "head-only": 0.55,
    "full": 0.54,
    "partial": 0.52,
    "two-phase": 0.48,
    "scratch": 0.30,
}
# The rules move scores at a quarter of their stated size: on the suite, started from the fixed order fitted on
# the other tasks, they raised the mean tau from 0.55 to 0.58 at this weight (0.55 at half, 0.59 at a tenth) and
# lowered it to 0.44 at full weight; no single rule set earned more (benchmarks/advise_suite.py's rule ablation).
# They break near-ties of the prior.
RULE_WEIGHT = 0.25
NEAR_PERFECT = 0.95
WEAK = 0.75
USELESS_MARGIN = 0.15
GAP = 0.02
FEW = 30
PLENTY = 1000
BEST_TOL = 0.005
RGN_LOW = 0.7
RGN_TOP = 0.5
HEAD_LR = 1e-3
BODY_LR = 1e-4
# `compare --advise` skips a strategy scored more than this below the best-scored strategy compared. The six that
# start from the pretrained weights sit within 0.12 of each other in the prior and the rules (at RULE_WEIGHT) move
# a score by at most ~0.1, so only scratch (0.30 behind in the prior) ends this far behind, and only while no rule
# lifts it (pretrained features that barely help, or >= 1000 images per class). On the 13-task suite scratch was
# never the best strategy; its closest was 4 points below the best (faces, 100 test images).
FAR_BEHIND = 0.30
MIN_COMPARED = 2  # a comparison keeps at least the two best-scored strategies


# ---- signals -> ranking (pure; the rules of the module docstring) ---------------------------------------------


@dataclass
class Signals:
    """What the probes measured, per body stage (depth d = the features after stage d)."""

    stages: list[str]
    dims: list[int]
    linear: list[float]
    knn: list[float]
    logme: list[float]
    rgn: list[float]  # per body stage; empty when the gradient profile was not taken
    head_rgn: float | None
    n_classes: int
    chance: float  # val share of the most common class
    images_per_class: float  # median train images per class in the whole folder
    num_train: int
    num_val: int = 0  # val images the probes were scored on (0: unknown, the noise floor is GAP)

    @property
    def top(self) -> int:
        return len(self.stages) - 1

    @property
    def best_depth(self) -> int:
        """The deepest depth whose linear probe is within BEST_TOL of the best one."""
        best = max(self.linear)
        return max(d for d, a in enumerate(self.linear) if a >= best - BEST_TOL)

    @property
    def gap(self) -> float:
        """Best earlier-stage probe minus the top probe (> 0: earlier features separate the classes better)."""
        return max(self.linear[: self.top], default=self.linear[self.top]) - self.linear[self.top]

    @property
    def noise(self) -> float:
        """The smallest probe difference taken as real: GAP, or two standard errors of the top probe's val acc."""
        p = self.linear[self.top]
        se = math.sqrt(max(p * (1 - p), 0.0) / self.num_val) if self.num_val else 0.0
        return max(GAP, 2 * se)

    @property
    def rise(self) -> float:
        """Top probe minus the probe of the stage below it."""
        return self.linear[self.top] - self.linear[self.top - 1] if self.top > 0 else 0.0

    def rgn_shares(self) -> tuple[float, float]:
        """(share of the body's RGN in its lower half, share in its top quarter)."""
        r = np.asarray(self.rgn, dtype=np.float64)
        if r.size < 2 or not np.isfinite(r).all() or r.sum() <= 0:
            return math.nan, math.nan
        p = r / r.sum()
        n = len(p)
        return float(p[: n // 2].sum()), float(p[n - max(1, n // 4) :].sum())

    def layer_decay(self) -> float | None:
        """The per-stage LR factor that makes LR proportional to RGN (Auto-RGN) on a least-squares line through
        log RGN per stage: RGN_k / RGN_top = exp(-slope) ** (top - k), so layer_decay = exp(-slope), clipped to
        [0.5, 1] (1: RGN does not grow with depth, no decay)."""
        r = np.asarray(self.rgn, dtype=np.float64)
        if r.size < 2 or not (r > 0).all() or not np.isfinite(r).all():
            return None
        slope = float(np.polyfit(np.arange(len(r)), np.log(r), 1)[0])
        return round(float(np.clip(math.exp(-slope), 0.5, 1.0)), 2)


def signals_from_doc(doc: dict[str, Any]) -> Signals:
    """The Signals an advise.json was ranked from (so a ranking can be recomputed, e.g. with another prior)."""
    depths = doc["signals"]["depths"]
    rgn = [d["rgn"] for d in depths]
    return Signals(
        stages=[d["stage"] for d in depths],
        dims=[d["dim"] for d in depths],
        linear=[d["linear_acc"] for d in depths],
        knn=[d["knn_acc"] for d in depths],
        logme=[d["logme"] for d in depths],
        rgn=[] if any(r is None for r in rgn) else rgn,
        head_rgn=doc["signals"]["head_rgn"],
        n_classes=len(doc["classes"]),
        chance=doc["chance"],
        images_per_class=doc["images_per_class"],
        num_train=doc["num_train"],
        num_val=doc["sampled"]["val"],
    )


def pct(x: float) -> str:
    return f"{x:.1%}"


Rule = tuple[str, dict[str, float]]  # (the reason, the score change per strategy)


def _rules_feature_quality(sig: Signals) -> list[Rule]:
    """How good the frozen top features are."""
    out: list[Rule] = []

    def add(text: str, changes: dict[str, float]) -> None:
        out.append((text, changes))

    top_name, top_acc = sig.stages[sig.top], sig.linear[sig.top]
    if max(sig.linear) - sig.chance < USELESS_MARGIN:
        add(
            f"no depth's linear probe gets more than {USELESS_MARGIN:.0%} above the majority class "
            f"({pct(max(sig.linear))} vs {pct(sig.chance)}): the pretrained features barely help",
            {"scratch": 0.25, "full": 0.10, "head-only": -0.20},
        )
    elif top_acc >= NEAR_PERFECT:
        add(
            f"a linear probe on the frozen top features ({top_name}) already reaches {pct(top_acc)}: a new head "
            "alone gets almost all of it, at the lowest cost",
            {"head-only": 0.15, "partial": 0.03, "full": -0.05, "scratch": -0.10},
        )
    elif top_acc < WEAK:
        add(
            f"the frozen top features separate the classes only to {pct(top_acc)} (linear probe on {top_name}): "
            "the backbone has to adapt",
            {"head-only": -0.10, "full": 0.06, "layer-wise": 0.03, "two-phase": 0.03},
        )
    return out


def _rules_depth(sig: Signals) -> list[Rule]:
    """Earlier features better than the top."""
    out: list[Rule] = []

    def add(text: str, changes: dict[str, float]) -> None:
        out.append((text, changes))

    top_acc = sig.linear[sig.top]
    earlier = max(range(sig.top), key=lambda d: sig.linear[d]) if sig.top > 0 else sig.top
    if sig.gap >= sig.noise:
        add(
            f"the probe after {sig.stages[earlier]} reaches {pct(sig.linear[earlier])}, {sig.gap * 100:.1f} points "
            f"above the top ({pct(top_acc)}): the last stages are too specific to the pretraining task for this "
            "data; thaw them",
            {"head-only": -(0.05 + sig.gap), "partial": 0.06, "full": 0.03, "layer-wise": 0.02},
        )
    elif sig.rise >= sig.noise:
        add(
            f"the probe still rises at the top ({sig.rise * 100:+.1f} points over {sig.stages[sig.top - 1]}): "
            "the pretrained top features suit this data",
            {"head-only": 0.03},
        )
    elif sig.gap > 0:
        add(
            f"the probe after {sig.stages[earlier]} ({pct(sig.linear[earlier])}) is {sig.gap * 100:.1f} points above "
            f"the top ({pct(top_acc)}), within the noise of {sig.noise * 100:.1f} points on {sig.num_val} val images",
            {},
        )
    return out


def _rules_data_size(sig: Signals) -> list[Rule]:
    """Data size."""
    out: list[Rule] = []

    def add(text: str, changes: dict[str, float]) -> None:
        out.append((text, changes))

    m = sig.images_per_class
    if m < FEW:
        add(
            f"few images per class (median {m:.0f} < {FEW}): training every layer overfits",
            {"full": -0.12, "scratch": -0.25, "head-only": 0.06, "two-phase": 0.02},
        )
    elif m < PLENTY:
        add(f"{m:.0f} images per class (median) is far too few to train from scratch", {"scratch": -0.10})
    else:
        add(
            f"plenty of data (median {m:.0f} images per class): full fine-tuning can use it",
            {"full": 0.08, "two-phase": 0.04, "scratch": 0.05, "head-only": -0.05},
        )
    return out


def _rules_logme(sig: Signals) -> list[Rule]:
    """LogME per depth."""
    out: list[Rule] = []

    def add(text: str, changes: dict[str, float]) -> None:
        out.append((text, changes))

    finite = [(d, v) for d, v in enumerate(sig.logme) if math.isfinite(v)]
    if finite:
        peak = max(finite, key=lambda dv: dv[1])[0]
        if peak < sig.top:
            add(
                f"LogME peaks after {sig.stages[peak]} ({sig.logme[peak]:.3f} vs {sig.logme[sig.top]:.3f} at the top)",
                {"partial": 0.03, "head-only": -0.03},
            )
        else:
            add(f"LogME is highest at the top ({sig.logme[sig.top]:.3f})", {"head-only": 0.02})
    return out


def _rules_gradients(sig: Signals) -> list[Rule]:
    """Where the gradients push."""
    out: list[Rule] = []

    def add(text: str, changes: dict[str, float]) -> None:
        out.append((text, changes))

    low, high = sig.rgn_shares()
    if math.isfinite(low) and low >= RGN_LOW:
        add(
            f"{low:.0%} of the relative gradient norm lies in the lower half of the stages: the loss asks for "
            "changes early in the network",
            {"full": 0.05, "two-phase": 0.02, "head-only": -0.03, "partial": -0.03},
        )
    elif math.isfinite(high) and high >= RGN_TOP:
        add(
            f"{high:.0%} of the relative gradient norm lies in the top quarter of the stages: the change belongs "
            "at the top",
            {"partial": 0.03, "layer-wise": 0.03},
        )
    return out


RuleSet = Callable[[Signals], list[Rule]]
RULES: tuple[RuleSet, ...] = (_rules_feature_quality, _rules_depth, _rules_data_size, _rules_logme, _rules_gradients)


def rank_strategies(
    sig: Signals,
    prior: dict[str, float] | None = None,
    rules: tuple[RuleSet, ...] = RULES,
    rule_weight: float = RULE_WEIGHT,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """(ranking rows, recommendation, reasons): the rules of the module docstring applied to `sig`, starting from
    `prior` (default PRIOR; benchmarks/advise_suite.py passes one fitted on other tasks and leaves rules out)."""
    prior = prior or PRIOR
    score = dict(prior)
    why: dict[str, list[str]] = {s: [] for s in STRATEGY_ORDER}
    reasons: list[str] = []
    for rule_set in rules:
        for text, changes in rule_set(sig):
            reasons.append(text)
            for name, delta in changes.items():
                delta *= rule_weight
                score[name] += delta
                why[name].append(f"{delta:+.2f}: {text}")
    best = sig.best_depth
    order = sorted(STRATEGY_ORDER, key=lambda s: (-round(score[s], 6), STRATEGY_ORDER.index(s)))
    rec = recommend(sig, best)
    ranking = [
        {
            "rank": i + 1,
            "strategy": name,
            "score": round(score[name], 3),
            "prior": prior[name],
            **({"variant": rec["partial"]} if name == "partial" else {}),
            "reasons": why[name],
        }
        for i, name in enumerate(order)
    ]
    rec["strategy"] = order[0]
    rec["run"] = rec["partial"] if order[0] == "partial" else order[0]
    reasons.append(
        f"partial: freeze {rec['freeze_stages']} of {len(sig.stages)} stages ({rec['partial']}), {rec['freeze_reason']}"
    )
    reasons.append(f"learning rates: {rec['lr_reason']}")
    return ranking, rec, reasons


def far_behind(ranking: list[dict[str, Any]], names: list[str]) -> dict[str, str]:
    """The strategies of `names` that `compare --advise` skips, each with its reason: scored more than FAR_BEHIND
    below the best-scored of `names` (a name matches a ranking row by its strategy or, for partial, its variant;
    names the advisor did not score are never skipped), keeping at least MIN_COMPARED strategies."""
    score: dict[str, tuple[float, str]] = {}
    for row in ranking:
        for key in {row["strategy"], row.get("variant", row["strategy"])}:
            score[key] = (float(row["score"]), row["strategy"])
    scored = sorted((n for n in names if n in score), key=lambda n: -score[n][0])
    if not scored:
        return {}
    top = scored[0]
    top_score = score[top][0]
    behind = [n for n in reversed(scored) if top_score - score[n][0] > FAR_BEHIND + 1e-9]  # the worst first
    return {
        n: f"the advisor scored it {score[n][0]:.2f}, {top_score - score[n][0]:.2f} below {top} ({top_score:.2f}); "
        f"more than {FAR_BEHIND:.2f} behind is skipped"
        for n in behind[: max(0, len(names) - MIN_COMPARED)]
    }


def recommend(sig: Signals, best: int) -> dict[str, Any]:
    """Freeze depth for partial and the LRs (module docstring)."""
    n = len(sig.stages)
    k = min(max(best + 1, 1), n - 1)
    peak = max(range(n), key=lambda d: sig.linear[d])
    freeze_reason = (
        f"up to {sig.stages[best]}, the deepest stage whose probe ({pct(sig.linear[best])}) is within "
        f"{BEST_TOL * 100:.1f} points of the best ({pct(sig.linear[peak])} after {sig.stages[peak]})"
    )
    if best == sig.top:
        freeze_reason = f"every stage but the last: the top features ({pct(sig.linear[best])}) are the best"
    if sig.images_per_class < FEW and k < math.ceil(2 * n / 3):
        k = math.ceil(2 * n / 3)
        freeze_reason += f"; at least 2/3 frozen with few images per class ({sig.images_per_class:.0f})"
    frac = Fraction(k, n)
    body = BODY_LR
    top_acc = sig.linear[sig.top]
    if top_acc >= 0.9:
        body, lr_reason = BODY_LR * 0.3, f"the top probe is {pct(top_acc)}: small steps keep features that fit"
    elif top_acc < 0.6 or sig.gap >= 0.05:
        body, lr_reason = BODY_LR * 3, "the features have to move: a weak top probe or a large gap"
    else:
        lr_reason = "the strategies' default body LR"
    decay = sig.layer_decay()
    lr_reason = f"body {body:.0e} ({lr_reason}), partial {3 * body:.0e}, head {HEAD_LR:.0e}"
    if decay is not None:
        lr_reason += f"; layer_decay {decay:g} from the gradient profile"
    return {
        "partial": f"partial-{frac}",
        "freeze_stages": k,
        "freeze_reason": freeze_reason,
        "lr": {"head": HEAD_LR, "body": float(f"{body:.1g}"), "partial": float(f"{3 * body:.1g}")},
        "layer_decay": decay,
        "lr_reason": lr_reason,
    }


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


# ---- data: a stratified sample through the decode-once cache ---------------------------------------------------


def sample_indices(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Up to `cap` positions, each class keeping its share (every class at least one); sorted, so a sample that
    is the whole split lists the same files in the same order as training (and shares its image cache)."""
    labels = np.asarray(labels)
    n = len(labels)
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keys = np.empty(n)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keys[idx[rng.permutation(len(idx))]] = (np.arange(len(idx)) + rng.random()) / len(idx)
        keys[idx[np.argmin(keys[idx])]] = -1.0  # every class present
    return np.sort(np.argsort(keys, kind="stable")[:cap])


def sample_data(
    config: TrainConfig, max_train: int, max_val: int, quiet: bool
) -> tuple[PreparedData, dict[str, int], np.ndarray]:
    """(sampled data, image counts of the whole splits, train images per class in the whole folder)."""
    from thawline.prepare import PreparedData, decode_split, discover_data, warn_skipped

    found, img_size, interpolation = discover_data(config)
    splits: dict[str, SplitData] = {}
    skipped = [(s.path, s.reason) for s in found.skipped]
    totals: dict[str, int] = {}
    for name, cap in (("train", max_train), ("val", max_val)):
        files = found.splits[name]
        labels = np.asarray(files.labels, dtype=np.int64)
        totals[name] = len(labels)
        pick = sample_indices(labels, cap, config.seed)
        paths = [files.paths[i] for i in pick]
        splits[name], bad = decode_split(found, name, paths, labels[pick], config, img_size, interpolation, quiet)
        skipped.extend(bad)
    warn_skipped(found.skipped, len(skipped) - len(found.skipped), "`thawline data check`")
    per_class = np.bincount(np.asarray(found.splits["train"].labels), minlength=len(found.classes))
    return PreparedData(found, img_size, interpolation, splits, skipped), totals, per_class


def sample_prepared(
    data: PreparedData, max_train: int, max_val: int, seed: int
) -> tuple[PreparedData, dict[str, int], np.ndarray]:
    """sample_data's result from data a caller already prepared (compare): rows of its decode-once cache, no
    second decode."""
    from dataclasses import replace

    from thawline.prepare import SplitData

    splits: dict[str, SplitData] = {}
    totals: dict[str, int] = {}
    for name, cap in (("train", max_train), ("val", max_val)):
        split = data.splits[name]
        totals[name] = len(split)
        pick = sample_indices(split.labels, cap, seed)
        splits[name] = SplitData(
            name, split.cache, [split.paths[i] for i in pick], split.labels[pick], split.rows[pick]
        )
    per_class = np.bincount(data.splits["train"].labels, minlength=len(data.classes))
    return replace(data, splits=splits), totals, per_class


# ---- the backbone pass: pooled features after every stage ------------------------------------------------------


def collect_features(
    setup: RunSetup, split: SplitData, names: list[str], quiet: bool
) -> tuple[list[np.ndarray], np.ndarray]:
    """(pooled features after each stage, the classifier's input) for every image of `split`, one backbone pass
    (eval, no grad), kept in the frozen-feature cache folder so a second advise reads them back."""
    import torch
    from tqdm import tqdm

    from thawline.cache import FeatureCache, state_fingerprint
    from thawline.models import pool_output

    model = setup.model
    modules = dict(model.named_modules())
    classifier = model.get_classifier()
    captured: dict[str, torch.Tensor] = {}
    dims: list[int] = []

    @torch.inference_mode()
    def compute(idx: np.ndarray, views: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(split.cache.store.read(split.rows[idx]))
        flip = torch.from_numpy(np.asarray(views) == 1)
        if flip.any():
            rows[flip] = rows[flip].flip(2)
        captured.clear()
        hooks = [
            modules[n].register_forward_hook(lambda _m, _i, out, n=n: captured.update({n: pool_output(out)}))
            for n in names
        ]
        hooks.append(classifier.register_forward_pre_hook(lambda _m, inp: captured.update({"": pool_output(inp[0])})))
        try:
            from thawline.models import eval_mode

            amp = torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.amp)
            with eval_mode(model), amp:
                model(setup.normalize(rows).to(setup.device))
        finally:
            for h in hooks:
                h.remove()
        parts = [captured[n] for n in names] + [captured[""]]
        if not dims:
            dims.extend(p.shape[1] for p in parts)
        return torch.cat(parts, dim=1).float().cpu()

    head_modules = {p.rsplit(".", 1)[0] for p in setup.smap.params[setup.smap.head]}
    state = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in head_modules}
    key = "_".join(
        [
            "advise",
            setup.config.model.replace("/", "_"),
            split.cache.key,
            state_fingerprint(state),
            f"amp{int(setup.amp)}cl{int(setup.channels_last)}",
            str(len(split)),
            hashlib.sha1(f"{split.rows.tolist()}|{names}".encode()).hexdigest()[:10],
        ]
    )
    compute(np.arange(1), np.zeros(1, np.int64))  # one image: the width of each depth (also when read from the cache)
    store = FeatureCache(key, len(split), 1, compute, setup.config.batch_size * 2, setup.cache_dir)
    if not store.complete:
        bar = tqdm(
            total=len(split), desc=f"features {split.name}", unit="img", disable=quiet or not sys.stderr.isatty()
        )
        store.fill_all(bar.update)
        bar.close()
    flat = store.read(np.arange(len(split)), np.zeros(len(split), dtype=np.int64)).reshape(len(split), -1)
    store.close()
    bounds = np.cumsum([0, *dims])
    parts = [flat[:, bounds[i] : bounds[i + 1]].astype(np.float64) for i in range(len(dims))]
    return parts[:-1], parts[-1]


# ---- gradient profile --------------------------------------------------------------------------------------


def gradient_profile(setup: RunSetup, split: SplitData, head: ProbeFit | None, batches: int) -> list[float]:
    """Mean over `batches` train batches of ||g|| / ||w|| per stage (body stages, then the head), the model in
    eval mode (BatchNorm on running statistics, no dropout) with its head set to `head` when given."""
    import torch

    from thawline.sources import image_batches

    model, smap = setup.model, setup.smap
    params = dict(model.named_parameters())
    if head is not None:
        classifier = model.get_classifier()
        with torch.no_grad():
            classifier.weight.copy_(torch.from_numpy(head.weight.T).to(classifier.weight))
            classifier.bias.copy_(torch.from_numpy(head.bias).to(classifier.bias))
    for p in params.values():
        p.requires_grad_(True)
    sums = np.zeros(len(smap.names))
    done = 0
    model.eval()
    amp = torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.amp)
    it = image_batches(
        split, setup.config.batch_size, setup.normalize, shuffle=True, hflip=False, seed=setup.config.seed
    )
    for x, y in it:
        if done == batches:
            break
        model.zero_grad(set_to_none=True)
        with amp:
            loss = setup.loss_fn(model(x.to(setup.device)), y.to(setup.device))
        loss.backward()
        for s, names in enumerate(smap.params):
            g = sum(float(params[n].grad.double().pow(2).sum()) for n in names if params[n].grad is not None)
            w = sum(float(params[n].detach().double().pow(2).sum()) for n in names)
            sums[s] += math.sqrt(g) / math.sqrt(w) if w > 0 else 0.0
        done += 1
    model.zero_grad(set_to_none=True)
    return (sums / max(done, 1)).tolist()


# ---- the command --------------------------------------------------------------------------------------------


@dataclass
class Advice:
    out_dir: Path
    doc: dict[str, Any]  # what advise.json holds

    @property
    def ranking(self) -> list[str]:
        return [r["strategy"] for r in self.doc["ranking"]]

    @property
    def recommendation(self) -> dict[str, Any]:
        return self.doc["recommendation"]

    @property
    def seconds(self) -> float:
        return float(self.doc["seconds"]["total"])


def advise(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    max_train: int = MAX_TRAIN,
    max_val: int = MAX_VAL,
    grad_batches: int = GRAD_BATCHES,
    quiet: bool = False,
    data: PreparedData | None = None,
) -> Advice:
    """Probe the frozen backbone on a sample of `config.data` and predict the strategies' ranking (module
    docstring); writes advise.json, advise_probes.png and advise.html into `out` (default: config.out, else
    runs/advise-N). `data`: what `prepare_data(config)` returned, when the caller has it (compare), so no image
    is discovered or decoded again. Prints the signals, ranking and reasons unless `quiet`."""
    from thawline.prepare import setup_run
    from thawline.runfolder import RUNS_PARENT, make_writable_folder, next_run_dir
    from thawline.strategies import get_strategy

    if max_train < 2 or max_val < 1:
        raise ThawlineError("advise needs at least 2 train and 1 val images in its sample")
    t0 = time.perf_counter()
    sampled = sample_prepared(data, max_train, max_val, config.seed) if data is not None else None  # from compare
    data, totals, per_class = sampled or sample_data(config, max_train, max_val, quiet)
    out_dir = Path(out or config.out or next_run_dir(RUNS_PARENT, "advise"))
    make_writable_folder(out_dir)
    t_data = time.perf_counter()
    setup = setup_run(config, get_strategy("head-only"), data)  # pretrained weights, training's normalisation
    train, val = data.splits["train"], data.splits["val"]
    names = _stage_names(setup, config)
    feats_tr, pre_tr = collect_features(setup, train, names, quiet)
    feats_va, pre_va = collect_features(setup, val, names, quiet)
    t_feat = time.perf_counter()
    ytr, yva, n_classes = train.labels, val.labels, len(data.classes)
    fits, knn, lm = _depth_probes(feats_tr, ytr, feats_va, yva, n_classes)
    head = _head_probe(setup, fits[-1], feats_tr[-1], pre_tr, ytr, pre_va, yva, n_classes)
    t_probe = time.perf_counter()
    rgn = gradient_profile(setup, train, head, grad_batches) if grad_batches > 0 else []
    t_grad = time.perf_counter()
    sig = Signals(
        stages=list(setup.smap.names[:-1]),
        dims=[a.shape[1] for a in feats_tr],
        linear=[f.acc for f in fits],
        knn=knn,
        logme=lm,
        rgn=rgn[:-1],
        head_rgn=rgn[-1] if rgn else None,
        n_classes=n_classes,
        chance=float(np.bincount(yva, minlength=n_classes).max() / len(yva)),
        images_per_class=float(np.median(per_class)),
        num_train=totals["train"],
        num_val=len(yva),
    )
    ranking, rec, reasons = rank_strategies(sig)
    if head is None:
        reasons.append(RANDOM_HEAD)
    rec["command"] = _commands(config, ranking, rec)
    doc = {
        "format": FORMAT,
        **_run_facts(config, setup, data),
        "num_train": totals["train"],
        "num_val": totals["val"],
        "sampled": {"train": len(train), "val": len(val)},
        "images_per_class": sig.images_per_class,
        "chance": sig.chance,
        "device": str(setup.device),
        "signals": _signals_doc(sig, fits, names, head is not None, grad_batches),
        "ranking": ranking,
        "recommendation": rec,
        "reasons": reasons,
        "figure": FIGURE,
    }
    _plot(sig, rec, config, out_dir / FIGURE)
    marks = (t0, t_data, t_feat, t_probe, t_grad)
    doc["seconds"] = {k: round(b - a, 2) for k, a, b in zip(SECTIONS, marks, marks[1:], strict=False)}
    doc["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(out_dir / ADVICE_JSON, json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out_dir / ADVICE_HTML, advice_page(doc))
    if not quiet:
        print(format_advice(doc), flush=True)
    return Advice(out_dir, doc)


RANDOM_HEAD = "the gradient profile used a random head (the classifier is not a linear layer on pooled features)"


def _run_facts(config: TrainConfig, setup: RunSetup, data: PreparedData) -> dict[str, Any]:
    """What advise.json records of the model and data it probed."""
    return {"model": config.model, "weights": config.weights, "weights_source": setup.weights_info.get("source"),
            "data": str(config.data), "img_size": data.img_size, "classes": data.classes}  # fmt: skip


SECTIONS = ("data", "features", "probes", "gradients")  # advise.json's "seconds", each from one mark to the next


def _depth_probes(
    feats_tr: list[np.ndarray], ytr: np.ndarray, feats_va: list[np.ndarray], yva: np.ndarray, n_classes: int
) -> tuple[list[ProbeFit], list[float], list[float]]:
    """Per depth: the linear probe's fit, k-NN's val accuracy and LogME on train."""
    fits = [linear_probe(a, ytr, b, yva, n_classes) for a, b in zip(feats_tr, feats_va, strict=True)]
    knn = [knn_accuracy(a, ytr, b, yva) for a, b in zip(feats_tr, feats_va, strict=True)]
    return fits, knn, [logme(a, ytr) for a in feats_tr]


def _head_probe(setup: RunSetup, top_fit: ProbeFit, top_tr: np.ndarray, pre_tr: np.ndarray, ytr: np.ndarray,
                pre_va: np.ndarray, yva: np.ndarray, n_classes: int) -> ProbeFit | None:  # fmt: skip
    """The probe to put in the classifier's place for the gradient profile: the last stage's when the classifier
    reads exactly those features, else one fitted on its input; None when the classifier is no linear layer."""
    import torch

    classifier = setup.model.get_classifier()
    if not isinstance(classifier, torch.nn.Linear) or classifier.in_features != pre_tr.shape[1]:
        return None
    same = pre_tr.shape == top_tr.shape and np.allclose(pre_tr, top_tr, rtol=1e-4, atol=1e-5)
    return top_fit if same else linear_probe(pre_tr, ytr, pre_va, yva, n_classes)


def _stage_names(setup: RunSetup, config: TrainConfig) -> list[str]:
    """The modules whose outputs end each stage, or one line saying the model cannot be probed stage by stage."""
    import torch

    train = setup.data.splits["train"]
    example = setup.normalize(torch.from_numpy(train.cache.store.read(train.rows[:2]))).to(setup.device)
    from thawline.models import stage_outputs

    names = stage_outputs(setup.model, setup.smap, example)
    if names is None:
        raise ThawlineError(
            f"advise cannot tell where the stages of '{config.model}' end (its modules do not run stage by "
            "stage); it works on the EfficientNet/MobileNet, ResNet, ConvNeXt and ViT families"
        )
    return names


def _signals_doc(
    sig: Signals, fits: list[ProbeFit], names: list[str], head_fitted: bool, grad_batches: int
) -> dict[str, Any]:
    """advise.json's "signals": the probes per depth and the summary numbers the rules read."""
    return {
        "depths": [
            {
                "stage": sig.stages[d],
                "index": d,
                "module": names[d],
                "dim": sig.dims[d],
                "linear_acc": round(sig.linear[d], 4),
                "linear_ridge": fits[d].ridge,
                "linear_loo_acc": round(fits[d].loo_acc, 4),
                "knn_acc": round(sig.knn[d], 4),
                "logme": round(sig.logme[d], 5),
                "rgn": sig.rgn[d] if sig.rgn else None,
            }
            for d in range(len(sig.stages))
        ],
        "head_rgn": sig.head_rgn,
        "top_linear_acc": round(sig.linear[sig.top], 4),
        "best_depth": sig.best_depth,
        "gap": round(sig.gap, 4),
        "noise": round(sig.noise, 4),
        "rise": round(sig.rise, 4),
        "rgn_lower_half_share": _finite(sig.rgn_shares()[0]),
        "rgn_top_quarter_share": _finite(sig.rgn_shares()[1]),
        "head_fitted": head_fitted,
        "knn_k": KNN_K,
        "grad_batches": grad_batches,
    }


def _plot(sig: Signals, rec: dict[str, Any], config: TrainConfig, path: Path) -> None:
    from thawline.plots import plot_probe_depth

    plot_probe_depth(
        sig.stages, sig.linear, sig.knn, sig.logme, sig.rgn, path, chance=sig.chance, freeze=rec["freeze_stages"],
        title=f"{config.model} on {Path(str(config.data)).name}: frozen features after each stage",
    )  # fmt: skip


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def _commands(config: TrainConfig, ranking: list[dict[str, Any]], rec: dict[str, Any]) -> dict[str, str]:
    """The compare of the three predicted best (to check the prediction) and the train of the predicted winner."""
    import shlex

    # every option the user set but the strategy's own (and where it runs): the suggestion reruns on the same data
    flags = option_flags(config, exclude=("data", "model", "strategy", "lr", *PLACE_OPTIONS))
    base = " ".join(shlex.quote(a) for a in ["--data", str(config.data), "--model", config.model, *flags])
    top3 = [r.get("variant", r["strategy"]) for r in ranking[:3]]
    lr = {"head-only": rec["lr"]["head"], "full": rec["lr"]["body"]}.get(rec["strategy"])
    if rec["strategy"] == "partial":
        lr = rec["lr"]["partial"]
    train = f"thawline train {base} --strategy {rec['run']}" + (f" --lr {lr:g}" if lr else "")
    return {"compare": f"thawline compare {base} --strategies {','.join(top3)}", "train": train}


def format_advice(doc: dict[str, Any]) -> str:
    """The console text: signals per stage, the predicted ranking with scores, the recommendation and reasons."""
    s = doc["sampled"]
    lines = [
        f"advise: {doc['model']} on {doc['data']} ({s['train']} of {doc['num_train']} train, {s['val']} of "
        f"{doc['num_val']} val images, {doc['img_size']} px, {doc['device']})",
        f"{'stage':<12} {'dim':>5} {'linear':>7} {'k-NN':>7} {'LogME':>8} {'||g||/||w||':>12}",
    ]
    for d in doc["signals"]["depths"]:
        rgn = f"{d['rgn']:.2e}" if d["rgn"] is not None else "-"
        lines.append(
            f"{d['stage']:<12} {d['dim']:>5} {d['linear_acc']:>7.1%} {d['knn_acc']:>7.1%} {d['logme']:>8.3f} {rgn:>12}"
        )
    lines.append("predicted ranking (no training):")
    for r in doc["ranking"]:
        name = r.get("variant", r["strategy"])
        lines.append(f"{r['rank']:>2}  {name:<14} score {r['score']:.3f}")
    rec = doc["recommendation"]
    lr = rec["lr"]
    decay = f", layer_decay {rec['layer_decay']:g}" if rec.get("layer_decay") is not None else ""
    lines.append(
        f"recommendation: {rec['run']}; partial as {rec['partial']}; lr head {lr['head']:g}, body {lr['body']:g}, "
        f"partial {lr['partial']:g}{decay}"
    )
    behind = far_behind(doc["ranking"], [r["strategy"] for r in doc["ranking"]])
    if behind:
        lines.append(f"far behind (compare --advise skips): {', '.join(behind)}")
    lines.append("why:")
    lines.extend(f"  - {r}" for r in doc["reasons"])
    lines.append(f"check it: {rec['command']['compare']}")
    t = doc["seconds"]
    lines.append(
        f"advise took {t['total']:.1f} s (data {t['data']:.1f}, features {t['features']:.1f}, probes "
        f"{t['probes']:.1f}, gradients {t['gradients']:.1f})"
    )
    return "\n".join(lines)


# ---- HTML: a section for a report, and advise.html ------------------------------------------------------------


def load_advice(folder: str | Path) -> dict[str, Any] | None:
    """advise.json of a folder, or None when there is none (or it cannot be read)."""
    path = Path(folder) / ADVICE_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def advice_html(doc: dict[str, Any], figure: str | None = FIGURE, left_out: Collection[str] = ()) -> str:
    """advise.json's dict as one HTML <section id="advice">: the predicted ranking, the recommendation, the
    probe-accuracy-vs-depth figure (`figure`: its src relative to the page, None for none), one paragraph of
    reasons and the signals per stage; `left_out`: the strategies `compare --advise` did not train, marked in the
    ranking. Uses the report's CSS classes; no scripts."""
    e = html.escape
    rec = doc["recommendation"]
    lr = rec["lr"]
    t = doc.get("seconds", {}).get("total")
    rows = []
    for r in doc["ranking"]:
        name = r.get("variant", r["strategy"])
        cls = ' class="winner"' if r["rank"] == 1 else ""
        why = "; ".join([f"prior {r['prior']:.2f}", *r["reasons"]])
        if r["strategy"] in left_out or name in left_out:
            why = f"not trained: more than {FAR_BEHIND:.2f} behind the best compared. {why}"
        rows.append(
            f'<tr{cls}><td>{r["rank"]}</td><td class="strategy">{e(name)}</td><td>{r["score"]:.3f}</td>'
            f'<td class="why" style="text-align:left;white-space:normal">{e(why)}</td></tr>'
        )
    depth_rows = []
    for d in doc["signals"]["depths"]:
        rgn = f"{d['rgn']:.2e}" if d.get("rgn") is not None else "-"
        depth_rows.append(
            f"<tr><td>{e(d['stage'])}</td><td>{d['dim']}</td><td>{d['linear_acc']:.1%}</td><td>{d['knn_acc']:.1%}</td>"
            f"<td>{d['logme']:.3f}</td><td>{rgn}</td></tr>"
        )
    s = doc["sampled"]
    decay = f", layer_decay {rec['layer_decay']:g}" if rec.get("layer_decay") is not None else ""
    took = f" in {t:.1f} s" if t is not None else ""
    fig = ""
    if figure:
        fig = (
            f'<figure><img src="{e(figure)}" alt="probe accuracy vs depth, LogME and gradient norm per stage">'
            "<figcaption>Probe accuracy vs depth: linear-probe and k-NN val accuracy of the frozen features after "
            "each stage (left); LogME and the relative gradient norm per stage (right); dashed: the recommended "
            "freeze depth for partial.</figcaption></figure>"
        )
    return "\n".join(
        [
            '<section id="advice">',
            f'<h2>Advice: predicted ranking without training <span class="sub">thawline advise on {s["train"]} '
            f"train / {s['val']} val images{took}</span></h2>",
            f"<p>Predicted winner: <b>{e(rec['run'])}</b>. For <code>partial</code>, freeze "
            f"{rec['freeze_stages']} of {len(doc['signals']['depths'])} stages: <b>{e(rec['partial'])}</b>. "
            f"Learning rates: head {lr['head']:g}, body {lr['body']:g}, partial {lr['partial']:g}{decay}. "
            f"Check it with <code>{e(rec['command']['compare'])}</code>.</p>",
            '<div class="table-wrap"><table class="left narrow" id="advice-ranking"><thead><tr><th>#</th>'
            '<th style="text-align:left">strategy</th><th>score</th><th style="text-align:left">why: the prior plus '
            "the rules that moved it</th></tr></thead><tbody>",
            *rows,
            "</tbody></table></div>",
            fig,
            f'<p class="reasons"><b>Why.</b> {e("; ".join(doc["reasons"]))}.</p>',
            '<details><summary>signals per stage</summary><div class="table-wrap"><table class="left narrow">'
            "<thead><tr><th>features after</th><th>dim</th><th>linear probe</th><th>k-NN</th><th>LogME</th>"
            "<th>||g||/||w||</th></tr></thead><tbody>",
            *depth_rows,
            "</tbody></table></div></details>",
            "</section>",
        ]
    )


PAGE_STYLE = """
  body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
         background: #f7f8fa; }
  main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 48px; }
  h1 { font-size: 22px; margin: 0 0 2px; } h2 { font-size: 17px; margin: 0 0 12px; }
  .sub { color: #667085; font-size: 12px; font-weight: 400; }
  section { background: #fff; border: 1px solid #e4e7ec; border-radius: 8px; padding: 16px 18px; margin-top: 18px; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { padding: 6px 10px; border-bottom: 1px solid #e4e7ec; text-align: right; }
  table.left th:first-child, table.left td:first-child, td.strategy { text-align: left; }
  th { font-size: 12px; color: #667085; background: #fafbfc; }
  tr.winner { background: #fff7dd; } tr.winner td.strategy { font-weight: 700; }
  img { max-width: 100%; height: auto; display: block; } figure { margin: 12px 0; }
  figcaption { color: #667085; font-size: 12px; } details summary { cursor: pointer; color: #2f5fb3; }
"""


def advice_page(doc: dict[str, Any]) -> str:
    """advise.html: the advice section on a page of its own, the figure beside it in the folder."""
    e = html.escape
    title = f"thawline advise: {doc['model']} on {doc['data']}"
    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{e(title)}</title>\n'
        f"<style>{PAGE_STYLE}</style>\n</head>\n<body>\n<main>\n<h1>{e(title)}</h1>\n"
        f'<div class="sub">{len(doc["classes"])} classes, {doc["num_train"]} train / {doc["num_val"]} val images, '
        f"{doc['img_size']} px, weights {e(str(doc.get('weights_source') or doc.get('weights')))}</div>\n"
        f"{advice_html(doc, doc.get('figure'))}\n</main>\n</body>\n</html>\n"
    )
