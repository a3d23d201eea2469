"""Fine-tuning strategies as data: each is a list of phases saying which stages train, how long, at what LR.

A phase's `train` selector never names a layer; it is resolved against the model's stages (timm's
`group_matcher`), so every strategy works on every timm model. Body stages are numbered from 0 (the stem):

    head        only the classifier head
    all         every stage and the head
    last:K      the top K body stages and the head (last:0 == head)
    first:K     the first K body stages (the stem first) and the head (first:0 == head)
    stages:A-B  body stages A to B, both included, and the head; stages:A is stage A alone
    middle      the middle body stage (the two middle ones when their number is even) and the head
    after:F     freeze the first fraction F of the stages (e.g. 2/3 or 0.5), train the rest and the head
    gradual     expands into phases that thaw the stages one at a time from the top, ending with all

Any selector may end in `@KINDS`: inside the selected body stages only those kinds of parameters train; the head
always trains whole. KINDS is `bias`, `norm` or `bias+norm`:

    bias        every parameter a module registers as `bias` or `*_bias` (convolutions, linears, norm layers,
                attention's in_proj_bias)
    norm        weight and bias of normalisation layers (BatchNorm, LayerNorm, GroupNorm, RMSNorm, ...), found by
                module type, never by name

e.g. `all@bias` (BitFit), `all@norm`, `last:2@bias+norm`, `gradual@norm`. A selected stage counts as a training
stage for the phase's `bn` policy (see `Phase.bn`), whatever kinds train in it.

`epochs` of the phases are relative shares: a run's epoch budget (--epochs) is split in proportion, so every
strategy in a comparison gets the same number of epochs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from thawline.core.config import load_yaml_mapping
from thawline.core.errors import ThawlineError, close_matches
from thawline.data.names import check_name, folder_name
from thawline.training.selectors import KINDS, _parse, parse_selector, select

BN_POLICIES = ("frozen", "train", "eval")
INITS = ("pretrained", "random")
HEADS = ("linear", "multi-depth")  # the classifier a strategy trains (thawline.models.multidepth builds the second)


@dataclass(frozen=True)
class Phase:
    train: str  # selector, see module docstring
    epochs: int = 1  # share of the epoch budget (or the exact epochs when no budget is given)
    lr: float = 1e-3
    # BatchNorm: frozen = eval in frozen stages (stats untouched), batch statistics in training ones; train =
    # every BN updates its statistics (the seeds' plain model.train()); eval = every BN uses its running
    # statistics, training ones too (Keras' advice after a head-only phase: features keep the distribution the
    # head was fitted on, instead of jumping to batch statistics at the thaw).
    # A stage selected with @KINDS is a training stage here: under frozen its BatchNorm layers (their affine bias,
    # or weight and bias, train) use batch statistics and update their running ones, as in `full`; modules in it
    # whose parameters all stay frozen (convolutions under @norm) run as in a frozen stage.
    bn: str = "frozen"
    layer_decay: float = 1.0  # LR multiplier per stage below the top trainable one (1.0 = same LR)
    # The head's LR as a multiple of the phase LR: a freshly initialised head next to a pretrained body has everything
    # to learn while the body should move little (fastai's discriminative LRs give the head 100x the first layers).
    head_lr_mult: float = 1.0


@dataclass(frozen=True)
class Strategy:
    name: str
    phases: tuple[Phase, ...]
    description: str = ""
    init: str = "pretrained"  # "random" ignores the weights source: the from-scratch baseline
    reference: str = ""  # the paper the recipe comes from, shown by `thawline strategies`
    head: str = "linear"  # "multi-depth": a linear head over every stage's pooled features (thawline.models.multidepth)


@dataclass(frozen=True)
class ResolvedPhase:
    """A phase bound to a model: concrete trainable stage indices (the head is index n_stages).

    `kinds` (from a selector's @KINDS) restricts the body stages in `trainable` to those parameter kinds; empty
    means whole stages. The head always trains whole."""

    index: int
    train: str
    trainable: tuple[int, ...]
    epochs: int
    lr: float
    bn: str
    layer_decay: float
    kinds: tuple[str, ...] = ()
    head_lr_mult: float = 1.0

    def __post_init__(self) -> None:  # rebuilt from to_dict() (lists) as from resolve() (tuples)
        object.__setattr__(self, "trainable", tuple(self.trainable))
        object.__setattr__(self, "kinds", tuple(self.kinds))

    def lr_multiplier(self, stage: int, head: int) -> float:
        """A stage's LR as a multiple of the phase LR: layer-wise decay below the head, the head's own multiple."""
        return self.head_lr_mult if stage == head else self.layer_decay ** (head - stage)

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "trainable": list(self.trainable), "kinds": list(self.kinds)}  # JSON/YAML-plain
        # Defaults left out: the dict of runs saved before these fields existed (resume compares it).
        if not self.kinds:
            del d["kinds"]
        if self.head_lr_mult == 1.0:
            del d["head_lr_mult"]
        return d


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy("head-only", (Phase("head", 1, 1e-3),), "train only the new classifier head"),
        Strategy(
            "two-phase",
            # bn eval after the thaw: measured on 1000 Fashion-MNIST images (lite0, 112 px, 2+2 epochs), switching
            # the thawed stages to batch statistics dropped val accuracy from 41% to 16%; eval BN went on to 69%.
            (Phase("head", 1, 1e-4), Phase("all", 1, 1e-5, bn="eval")),
            "seed recipe: head first at 1e-4, then every layer at 1e-5",
        ),
        Strategy(
            "layer-wise",
            (Phase("last:1", 1, 1e-3), Phase("all", 1, 1e-4, bn="eval")),
            "last stage + head first, then every layer",
        ),
        Strategy(
            "partial",
            # The fresh head at 3x the body's LR: on the suite's few-shot tasks (Lite0, 64 px, 10 epochs) test
            # accuracy went from 68.3% to 71.6% (fmnist-20) and from 57.3% to 65.0% (font-chars); 10x: 70.0%, 62.3%.
            (Phase("after:2/3", 1, 3e-4, head_lr_mult=3),),
            "freeze the first 2/3 of the stages, train the rest",
        ),
        Strategy(
            "gradual",
            (Phase("gradual", 1, 1e-4, bn="eval"),),
            "ULMFiT-style: thaw one stage per phase from the top, head first",
        ),
        Strategy(
            "full",
            # 3e-4, not 1e-4: with ~100 steps (small data) 1e-4 left the fresh head far from converged and full
            # fine-tuning at the level of scratch: on fmnist-20 44.3% -> 68.6% test, on font-chars 34.6% -> 59.6%.
            (Phase("all", 1, 3e-4),),
            "fine-tune every layer from the pretrained weights",
        ),
        Strategy("scratch", (Phase("all", 1, 1e-3),), "random init, every layer: the baseline", init="random"),
    ]
}

_SURGICAL = "Lee et al., Surgical Fine-Tuning Improves Adaptation to Distribution Shifts, ICLR 2023"

# Recipes from the literature: selectable by name (train --strategy, compare --strategies), listed by `thawline
# strategies`, but not in the default comparison (comparison.DEFAULT_STRATEGIES is the seven above).
LITERATURE: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy(
            "lp-ft",
            # The probe gets --head-steps like head-only (on cached features, enough steps to converge for
            # milliseconds); the fine-tuning keeps the features' statistics, as two-phase does after its head.
            (Phase("head", 1, 1e-3), Phase("all", 1, 1e-5, bn="eval")),
            "linear probe to convergence, then every layer at a 100x smaller LR",
            reference="Kumar et al., Fine-Tuning can Distort Pretrained Features and Underperform "
            "Out-of-Distribution, ICLR 2022",
        ),
        Strategy(
            "surgical-first",
            (Phase("first:1", 1, 3e-4),),
            "only the first stage (the stem) and the head: for input-level shifts (corruptions, colour, contrast)",
            reference=_SURGICAL,
        ),
        Strategy(
            "surgical-middle",
            (Phase("middle", 1, 3e-4),),
            "only the middle stage(s) and the head: for feature-level shifts",
            reference=_SURGICAL,
        ),
        Strategy(
            "bitfit",
            (Phase("all@bias", 1, 1e-3),),
            "only the biases of every stage, and the head",
            reference="Ben Zaken, Ravfogel & Goldberg, BitFit: Simple Parameter-efficient Fine-tuning for "
            "Transformer-based Masked Language-models, ACL 2022",
        ),
        Strategy(
            "norm-only",
            # Few parameters move: an LR 20x full fine-tuning's (the study tunes 1e-3..3e-3 for such methods).
            (Phase("all@norm", 1, 2e-3),),
            "only the normalisation layers' weights and biases, and the head, at a large LR",
            reference="Mai et al., Lessons Learned from a Unifying Empirical Study of Parameter-Efficient "
            "Transfer Learning (PETL) in Visual Recognition, 2024",
        ),
        Strategy(
            "head2toe",
            # A probe over every depth: the body frozen, so the head trains on cached features (head-steps apply).
            (Phase("head", 1, 1e-3),),
            "a linear head over features pooled from every stage (body frozen)",
            reference="Evci et al., Head2Toe: Utilizing Intermediate Representations for Better Transfer Learning, "
            "ICML 2022",
            head="multi-depth",
        ),
        Strategy(
            "llrd",
            (Phase("all", 1, 5e-4, layer_decay=0.7),),
            "every layer, the LR x0.7 per stage down from the head (layer-wise LR decay)",
            reference="Howard & Ruder, Universal Language Model Fine-tuning (discriminative LRs), ACL 2018; "
            "Clark et al., ELECTRA (layer-wise LR decay), ICLR 2020",
        ),
    ]
}


def strategy_from_dict(name: str, data: Any, source: str = "strategy") -> Strategy:
    """A user strategy from YAML: {description, init, reference, phases: [{train, epochs, lr, bn, layer_decay}]}."""
    if isinstance(data, list):
        data = {"phases": data}
    if not isinstance(data, dict) or not isinstance(data.get("phases"), list) or not data["phases"]:
        raise ThawlineError(f"{source} '{name}': needs a non-empty 'phases' list of {{train, epochs, lr}}")
    known = {"train", "epochs", "lr", "bn", "layer_decay", "head_lr_mult"}
    phases = []
    for i, p in enumerate(data["phases"]):
        if not isinstance(p, dict) or "train" not in p:
            raise ThawlineError(f"{source} '{name}' phase {i + 1}: must be a mapping with at least 'train'")
        unknown = set(p) - known
        if unknown:
            key = sorted(unknown)[0]
            raise ThawlineError(f"{source} '{name}' phase {i + 1}: unknown field '{key}'{close_matches(key, known)}")
        try:
            phase = Phase(
                train=str(p["train"]),
                epochs=int(p.get("epochs", 1)),
                lr=float(p.get("lr", 1e-3)),
                bn=str(p.get("bn", "frozen")),
                layer_decay=float(p.get("layer_decay", 1.0)),
                head_lr_mult=float(p.get("head_lr_mult", 1.0)),
            )
        except (TypeError, ValueError):
            raise ThawlineError(
                f"{source} '{name}' phase {i + 1}: epochs, lr, layer_decay, head_lr_mult must be numbers"
            ) from None
        validate_phase(phase, f"{source} '{name}' phase {i + 1}")
        phases.append(phase)
    unknown_top = set(data) - {"phases", "description", "init", "reference", "head"}
    if unknown_top:
        raise ThawlineError(
            f"{source} '{name}': unknown field '{sorted(unknown_top)[0]}' (use phases, description, init, reference, "
            "head)"
        )
    init = str(data.get("init", "pretrained"))
    if init not in INITS:
        raise ThawlineError(f"{source} '{name}': init '{init}' must be one of {', '.join(INITS)}")
    head = str(data.get("head", "linear"))
    if head not in HEADS:
        raise ThawlineError(f"{source} '{name}': head '{head}' must be one of {', '.join(HEADS)}")
    reference = str(data.get("reference", ""))
    return Strategy(name, tuple(phases), str(data.get("description", "user-defined")), init, reference, head)


def validate_phase(phase: Phase, where: str) -> None:
    if phase.bn not in BN_POLICIES:
        raise ThawlineError(f"{where}: bn '{phase.bn}' must be one of {', '.join(BN_POLICIES)}")
    if phase.epochs < 1 or not 0 < phase.lr < 10 or not 0 < phase.layer_decay <= 1:
        raise ThawlineError(f"{where}: needs epochs >= 1, 0 < lr < 10 and 0 < layer_decay <= 1")
    if not 0 < phase.head_lr_mult <= 1000:
        raise ThawlineError(f"{where}: head_lr_mult {phase.head_lr_mult:g} must be in (0, 1000], e.g. 10")
    _parse(phase.train, where)  # syntax only: stage ranges are checked against the model in resolve()


def load_strategies_file(path: str) -> dict[str, Strategy]:
    data = load_yaml_mapping(path, what="strategies file")
    block = data.get("strategies", data)
    if not isinstance(block, dict):
        raise ThawlineError(f"strategies file '{path}': expected a mapping name -> {{phases: [...]}}")
    return {check_user_name(name, path): strategy_from_dict(name, spec, f"strategy in '{path}'")
            for name, spec in block.items()}  # fmt: skip


def check_user_name(name: Any, path: str) -> str:
    """A strategy name from a strategies file: safe as a run folder's name, and not a built-in's (a file's
    `head-only: {train: all}` would train every layer and be reported as head-only)."""
    try:
        builtin = name in STRATEGIES or name in LITERATURE or partial_with_fraction(str(name)) is not None
    except ThawlineError:  # partial-<fraction out of range>: still the built-in partial's grammar
        builtin = True
    if not builtin:
        return check_name(name, "strategy", f"rename it in '{path}'")
    raise ThawlineError(
        f"strategies file '{path}' defines '{name}', which is a built-in strategy's name; give yours another name "
        f"(e.g. my-{folder_name(name)})"
    )


def partial_with_fraction(name: str) -> Strategy | None:
    """`partial-1/2` or `partial:0.5`: the partial strategy with another frozen fraction."""
    kind, sep, frac = name.replace("-", ":", 1).partition(":")
    if kind != "partial" or not sep:
        return None
    try:
        value = Fraction(frac)
    except (ValueError, ZeroDivisionError):
        return None
    if not 0 <= value < 1:
        raise ThawlineError(f"strategy '{name}': the frozen fraction must be in [0, 1), e.g. partial-1/2")
    base = STRATEGIES["partial"].phases[0]
    return Strategy(name, (Phase(f"after:{frac}", 1, base.lr, base.bn),), f"freeze the first {frac} of the stages")


def get_strategy(name: str, strategies_file: str | None = None) -> Strategy:
    registry = all_strategies(strategies_file)
    if name not in registry and (variant := partial_with_fraction(name)) is not None:
        return variant
    if name not in registry:
        raise ThawlineError(
            f"unknown strategy '{name}'{close_matches(name, registry)}; "
            f"known: {', '.join(registry)} (or define one with --strategies-file)"
        )
    return registry[name]


def split_budget(shares: list[int], budget: int) -> list[int]:
    """Split `budget` epochs in proportion to `shares`, each phase >= 1 (largest remainder)."""
    total = sum(shares)
    exact = [budget * s / total for s in shares]
    out = [max(1, math.floor(x)) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    i = 0
    while sum(out) < budget:
        out[order[i % len(order)]] += 1
        i += 1
    return out


def check_budget(strategy: Strategy, budget: int | None) -> None:
    """An epoch budget must give each declared phase one epoch; checked before any data is read."""
    if budget is not None and budget < len(strategy.phases):
        n = len(strategy.phases)
        raise ThawlineError(f"strategy '{strategy.name}' has {n} phases; give it at least --epochs {n}")


def resolve(strategy: Strategy, n_stages: int, budget: int | None) -> list[ResolvedPhase]:
    """Bind a strategy to a model with `n_stages` body stages and an epoch budget."""
    phases = list(strategy.phases)
    check_budget(strategy, budget)
    epochs = split_budget([p.epochs for p in phases], budget) if budget is not None else [p.epochs for p in phases]
    out: list[ResolvedPhase] = []
    where = f"strategy '{strategy.name}'"
    for phase, n_epochs in zip(phases, epochs, strict=True):
        parsed = _parse(phase.train, where)
        if parsed.base == "gradual":
            out.extend(_expand_gradual(phase, n_stages, n_epochs, len(out), parsed.kinds))
            continue
        trainable, kinds = select(phase.train, n_stages, where)
        out.append(
            ResolvedPhase(len(out), phase.train, trainable, n_epochs, phase.lr, phase.bn, phase.layer_decay, kinds,
                          phase.head_lr_mult)  # fmt: skip
        )
    return out


def _expand_gradual(
    phase: Phase, n_stages: int, n_epochs: int, start: int, kinds: tuple[str, ...] = ()
) -> list[ResolvedPhase]:
    """One phase per thaw step, from head only to all stages; fewer, larger steps when epochs are short.
    `gradual@KINDS` thaws only those kinds in each step (`last:k@KINDS`)."""
    steps = min(n_epochs, n_stages + 1)
    # Thawed body-stage counts evenly spaced from 0 to n_stages, so the last step trains everything.
    thawed = [round(i * n_stages / (steps - 1)) if steps > 1 else n_stages for i in range(steps)]
    per_step = split_budget([1] * steps, n_epochs)
    suffix = "@" + "+".join(kinds) if kinds else ""
    return [
        ResolvedPhase(
            start + i,
            f"last:{k}{suffix if k else ''}",
            tuple(range(n_stages - k, n_stages + 1)),
            e,
            phase.lr,
            phase.bn,
            phase.layer_decay,
            kinds if k else (),
            phase.head_lr_mult,
        )
        for i, (k, e) in enumerate(zip(thawed, per_step, strict=True))
    ]


def describe(strategy: Strategy) -> str:
    parts = [
        f"{p.train} x{p.epochs} @ lr {p.lr:g}"
        + (f", bn {p.bn}" if p.bn != "frozen" else "")
        + (f", decay {p.layer_decay:g}" if p.layer_decay != 1 else "")
        + (f", head x{p.head_lr_mult:g}" if p.head_lr_mult != 1 else "")
        for p in strategy.phases
    ]
    init = " [random init]" if strategy.init == "random" else ""
    head = f" [{strategy.head} head]" if strategy.head != "linear" else ""
    return " -> ".join(parts) + init + head


def all_strategies(strategies_file: str | None = None) -> dict[str, Strategy]:
    """The seed strategies, then the literature's, then the file's (which cannot reuse a built-in's name)."""
    registry = {**STRATEGIES, **LITERATURE}
    if strategies_file:
        registry.update(load_strategies_file(strategies_file))
    return registry


__all__ = [
    "KINDS",
    "LITERATURE",
    "Phase",
    "ResolvedPhase",
    "STRATEGIES",
    "Strategy",
    "all_strategies",
    "describe",
    "get_strategy",
    "parse_selector",
    "resolve",
    "select",
    "split_budget",
    "strategy_from_dict",
]
