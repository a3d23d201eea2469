"""The advisor's signals -> ranking, pure and without torch: the prior, the rules of `thawline.comparing.advise`'s
docstring, the recommendation, and which strategies `compare --advise` leaves out (`far_behind`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

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


# ---- signals -> ranking (pure; the rules of thawline.comparing.advise's docstring) -----------------------------


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
