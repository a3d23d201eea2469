"""Train selectors: the grammar a phase's `train` names its stages in (`head`, `last:2`, `after:2/3`, `all@bias`,
...; see `strategies`' docstring), parsed once and bound to a model's number of body stages. No torch."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from thawline.core.errors import ThawlineError

KINDS = ("bias", "norm")  # parameter kinds a selector can restrict its body stages to (`all@bias`)
SELECTORS = "head, all, last:K, first:K, stages:A-B, middle, after:F (e.g. after:2/3), gradual"


@dataclass(frozen=True)
class _Selector:
    """A parsed train selector, not yet bound to a model (see the module docstring)."""

    base: str  # head, all, gradual, middle, last, first, stages, after
    a: int = 0  # last:K / first:K: K; stages:A-B: A
    b: int = 0  # stages:A-B: B
    frac: float = 0.0  # after:F
    kinds: tuple[str, ...] = ()


def _parse(selector: str, where: str) -> _Selector:
    """Syntax only; one line naming the valid selectors when it is not one."""
    text, at, kinds_text = selector.strip().lower().partition("@")
    text = text.strip()
    kinds: tuple[str, ...] = ()
    if at:
        names = [k.strip() for k in kinds_text.split("+")]
        bad = next((k for k in names if k not in KINDS), None)
        if bad is not None:
            raise ThawlineError(
                f"{where}: train selector '{selector}': parameter kind '{bad}' is not one of bias, norm "
                "(e.g. all@bias, last:2@norm, all@bias+norm)"
            )
        kinds = tuple(k for k in KINDS if k in names)
    if text in ("head", "all", "gradual", "middle"):
        return _Selector(text, kinds=kinds)
    kind, _, arg = text.partition(":")
    try:
        if kind in ("last", "first"):
            k = int(arg)
            if k >= 0:
                return _Selector(kind, a=k, kinds=kinds)
        elif kind == "stages":
            lo, dash, hi = arg.partition("-")
            a = int(lo)
            b = int(hi) if dash else a
            if 0 <= a <= b:
                return _Selector(kind, a=a, b=b, kinds=kinds)
        elif kind == "after":
            frac = float(Fraction(arg))
            if 0 <= frac < 1:
                return _Selector(kind, frac=frac, kinds=kinds)
    except (ValueError, ZeroDivisionError):
        pass
    raise ThawlineError(
        f"{where}: train selector '{selector}' is not one of {SELECTORS}, optionally followed by @bias, @norm or "
        "@bias+norm (e.g. last:2@bias)"
    )


def _bind(sel: _Selector, n_stages: int, selector: str, where: str) -> tuple[int, ...]:
    """Trainable stage indices of a parsed selector on a model with `n_stages` body stages (head = n_stages)."""
    head = n_stages
    if sel.base == "head":
        return (head,)
    if sel.base in ("all", "gradual"):  # "gradual" is expanded before binding; alone it means everything
        return tuple(range(n_stages + 1))
    if sel.base == "middle":
        k = 1 if n_stages % 2 else 2
        first = max(0, (n_stages - k) // 2)
        return (*range(first, min(first + k, n_stages)), head)
    if sel.base == "last":
        return tuple(range(max(0, n_stages - sel.a), n_stages + 1))
    if sel.base == "first":
        return (*range(min(sel.a, n_stages)), head)
    if sel.base == "stages":
        if sel.b >= n_stages:
            raise ThawlineError(
                f"{where}: train selector '{selector}' names body stage {sel.b}, but this model's body stages are "
                f"0..{n_stages - 1} (the head trains anyway)"
            )
        return (*range(sel.a, sel.b + 1), head)
    return tuple(range(round(sel.frac * n_stages), n_stages + 1))  # after:F


def select(selector: str, n_stages: int, where: str = "phase") -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(trainable stage indices, parameter kinds) of a selector; kinds are () when only the head trains."""
    sel = _parse(selector, where)
    stages = _bind(sel, n_stages, selector, where)
    return stages, (sel.kinds if len(stages) > 1 else ())


def parse_selector(selector: str, n_stages: int, where: str = "phase") -> tuple[int, ...]:
    """Trainable stage indices for a selector; body stages are 0..n_stages-1, the head is n_stages."""
    return select(selector, n_stages, where)[0]
