"""Fine-tuning strategies as data: each is a list of phases saying which stages train, how long, at what LR.

A phase's `train` selector never names a layer; it is resolved against the model's stages (timm's
`group_matcher`), so every strategy works on every timm model:

    head        only the classifier head
    all         every stage and the head
    last:K      the top K stages and the head (last:0 == head)
    after:F     freeze the first fraction F of the stages (e.g. 2/3 or 0.5), train the rest and the head
    gradual     expands into phases that thaw the stages one at a time from the top, ending with all

`epochs` of the phases are relative shares: a run's epoch budget (--epochs) is split in proportion, so every
strategy in a comparison gets the same number of epochs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from thawline.errors import ThawlineError, close_matches

BN_POLICIES = ("frozen", "train", "eval")
INITS = ("pretrained", "random")


@dataclass(frozen=True)
class Phase:
    train: str  # selector, see module docstring
    epochs: int = 1  # share of the epoch budget (or the exact epochs when no budget is given)
    lr: float = 1e-3
    # BatchNorm: frozen = eval in frozen stages (stats untouched), batch statistics in training ones; train =
    # every BN updates its statistics (the seeds' plain model.train()); eval = every BN uses its running
    # statistics, training ones too (Keras' advice after a head-only phase: features keep the distribution the
    # head was fitted on, instead of jumping to batch statistics at the thaw).
    bn: str = "frozen"
    layer_decay: float = 1.0  # LR multiplier per stage below the top trainable one (1.0 = same LR)


@dataclass(frozen=True)
class Strategy:
    name: str
    phases: tuple[Phase, ...]
    description: str = ""
    init: str = "pretrained"  # "random" ignores the weights source: the from-scratch baseline


@dataclass(frozen=True)
class ResolvedPhase:
    """A phase bound to a model: concrete trainable stage indices (the head is index n_stages)."""

    index: int
    train: str
    trainable: tuple[int, ...]
    epochs: int
    lr: float
    bn: str
    layer_decay: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trainable": list(self.trainable)}  # JSON/YAML-plain


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
        Strategy("partial", (Phase("after:2/3", 1, 3e-4),), "freeze the first 2/3 of the stages, train the rest"),
        Strategy(
            "gradual",
            (Phase("gradual", 1, 1e-4, bn="eval"),),
            "ULMFiT-style: thaw one stage per phase from the top, head first",
        ),
        Strategy("full", (Phase("all", 1, 1e-4),), "fine-tune every layer from the pretrained weights"),
        Strategy("scratch", (Phase("all", 1, 1e-3),), "random init, every layer: the baseline", init="random"),
    ]
}


def strategy_from_dict(name: str, data: Any, source: str = "strategy") -> Strategy:
    """Build a user strategy from YAML data: {description, init, phases: [{train, epochs, lr, bn, layer_decay}]}."""
    if isinstance(data, list):
        data = {"phases": data}
    if not isinstance(data, dict) or not isinstance(data.get("phases"), list) or not data["phases"]:
        raise ThawlineError(f"{source} '{name}': needs a non-empty 'phases' list of {{train, epochs, lr}}")
    known = {"train", "epochs", "lr", "bn", "layer_decay"}
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
            )
        except (TypeError, ValueError):
            raise ThawlineError(f"{source} '{name}' phase {i + 1}: epochs, lr, layer_decay must be numbers") from None
        validate_phase(phase, f"{source} '{name}' phase {i + 1}")
        phases.append(phase)
    unknown_top = set(data) - {"phases", "description", "init"}
    if unknown_top:
        raise ThawlineError(
            f"{source} '{name}': unknown field '{sorted(unknown_top)[0]}' (use phases, description, init)"
        )
    init = str(data.get("init", "pretrained"))
    if init not in INITS:
        raise ThawlineError(f"{source} '{name}': init '{init}' must be one of {', '.join(INITS)}")
    return Strategy(name, tuple(phases), str(data.get("description", "user-defined")), init)


def validate_phase(phase: Phase, where: str) -> None:
    if phase.bn not in BN_POLICIES:
        raise ThawlineError(f"{where}: bn '{phase.bn}' must be one of {', '.join(BN_POLICIES)}")
    if phase.epochs < 1 or not 0 < phase.lr < 10 or not 0 < phase.layer_decay <= 1:
        raise ThawlineError(f"{where}: needs epochs >= 1, 0 < lr < 10 and 0 < layer_decay <= 1")
    parse_selector(phase.train, n_stages=8, where=where)  # syntax check on a nominal model


def load_strategies_file(path: str) -> dict[str, Strategy]:
    from thawline.config import load_yaml_mapping

    data = load_yaml_mapping(path)
    block = data.get("strategies", data)
    if not isinstance(block, dict):
        raise ThawlineError(f"strategies file '{path}': expected a mapping name -> {{phases: [...]}}")
    return {name: strategy_from_dict(str(name), spec, f"strategy in '{path}'") for name, spec in block.items()}


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
    registry = dict(STRATEGIES)
    if strategies_file:
        registry.update(load_strategies_file(strategies_file))
    if name not in registry and (variant := partial_with_fraction(name)) is not None:
        return variant
    if name not in registry:
        raise ThawlineError(
            f"unknown strategy '{name}'{close_matches(name, registry)}; "
            f"known: {', '.join(registry)} (or define one with --strategies-file)"
        )
    return registry[name]


def parse_selector(selector: str, n_stages: int, where: str = "phase") -> tuple[int, ...]:
    """Trainable stage indices for a selector; body stages are 0..n_stages-1, the head is n_stages."""
    head = n_stages
    sel = selector.strip().lower()
    if sel == "head":
        return (head,)
    if sel in ("all", "gradual"):  # "gradual" is expanded before binding; alone it means everything
        return tuple(range(n_stages + 1))
    kind, _, arg = sel.partition(":")
    try:
        if kind == "last":
            k = int(arg)
            if k < 0:
                raise ValueError
            return tuple(range(max(0, n_stages - k), n_stages + 1))
        if kind == "after":
            frac = float(Fraction(arg))
            if not 0 <= frac < 1:
                raise ValueError
            first = round(frac * n_stages)
            return tuple(range(first, n_stages + 1))
    except (ValueError, ZeroDivisionError):
        pass
    raise ThawlineError(
        f"{where}: train selector '{selector}' is not one of head, all, last:K, after:F (e.g. after:2/3), gradual"
    )


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


def resolve(strategy: Strategy, n_stages: int, budget: int | None) -> list[ResolvedPhase]:
    """Bind a strategy to a model with `n_stages` body stages and an epoch budget."""
    phases = list(strategy.phases)
    n_phases = len(phases)
    if budget is not None and budget < n_phases:
        raise ThawlineError(f"strategy '{strategy.name}' has {n_phases} phases; give it at least --epochs {n_phases}")
    epochs = split_budget([p.epochs for p in phases], budget) if budget is not None else [p.epochs for p in phases]
    out: list[ResolvedPhase] = []
    for phase, n_epochs in zip(phases, epochs, strict=True):
        if phase.train.strip().lower() == "gradual":
            out.extend(_expand_gradual(phase, n_stages, n_epochs, start=len(out)))
            continue
        trainable = parse_selector(phase.train, n_stages, f"strategy '{strategy.name}'")
        out.append(ResolvedPhase(len(out), phase.train, trainable, n_epochs, phase.lr, phase.bn, phase.layer_decay))
    return out


def _expand_gradual(phase: Phase, n_stages: int, n_epochs: int, start: int) -> list[ResolvedPhase]:
    """One phase per thaw step, from head only to all stages; fewer, larger steps when epochs are short."""
    steps = min(n_epochs, n_stages + 1)
    # Thawed body-stage counts evenly spaced from 0 to n_stages, so the last step trains everything.
    thawed = [round(i * n_stages / (steps - 1)) if steps > 1 else n_stages for i in range(steps)]
    per_step = split_budget([1] * steps, n_epochs)
    return [
        ResolvedPhase(
            start + i, f"last:{k}", tuple(range(n_stages - k, n_stages + 1)), e, phase.lr, phase.bn, phase.layer_decay
        )
        for i, (k, e) in enumerate(zip(thawed, per_step, strict=True))
    ]


def describe(strategy: Strategy) -> str:
    parts = [
        f"{p.train} x{p.epochs} @ lr {p.lr:g}"
        + (f", bn {p.bn}" if p.bn != "frozen" else "")
        + (f", decay {p.layer_decay:g}" if p.layer_decay != 1 else "")
        for p in strategy.phases
    ]
    init = " [random init]" if strategy.init == "random" else ""
    return " -> ".join(parts) + init


def all_strategies(strategies_file: str | None = None) -> dict[str, Strategy]:
    registry = dict(STRATEGIES)
    if strategies_file:
        registry.update(load_strategies_file(strategies_file))
    return registry


__all__ = [
    "Phase",
    "ResolvedPhase",
    "STRATEGIES",
    "Strategy",
    "all_strategies",
    "describe",
    "get_strategy",
    "parse_selector",
    "resolve",
    "split_budget",
    "strategy_from_dict",
]
