"""How OpenMP threads wait (`thawline/__init__.py`): a short spin only when nothing else is runnable at start, a
passing task ignored; yours kept when you set OMP_WAIT_POLICY; side-by-side workers always sleep at once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

import thawline
from thawline.comparing.placement import side_by_side_env


def looks(counts: list[int]) -> tuple[Callable[[], int], list[int]]:
    """A /proc/loadavg reader that returns `counts` (runnable tasks, this one included), and the looks taken."""
    taken: list[int] = []

    def runnable() -> int:
        taken.append(counts[len(taken)])
        return taken[-1]

    return runnable, taken


@pytest.mark.parametrize(
    ("counts", "idle", "taken"),
    [
        ([1, 1, 1, 1, 1], True, 3),  # idle: decided after three looks (20 ms)
        ([3, 1, 1, 1, 1], True, 4),  # a command ending as thawline starts: passes by
        ([1, 2, 1, 3, 1], True, 5),
        ([2, 2, 2, 1, 1], False, 3),  # a busy task: seen in every look
        ([2, 1, 2, 1, 2], False, 5),
    ],
)
def test_idle_is_what_most_looks_see(counts: list[int], idle: bool, taken: int) -> None:
    runnable, seen = looks(counts)
    assert thawline._idle(runnable=runnable) is idle
    assert len(seen) == taken


def test_without_load_figures_the_machine_is_not_called_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable() -> int:
        raise OSError("no /proc here")

    def no_loadavg() -> tuple[float, float, float]:
        raise OSError

    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.3, 0.3))
    assert thawline._idle(runnable=unreadable)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 0.3, 0.3))
    assert not thawline._idle(runnable=unreadable)
    monkeypatch.setattr(os, "getloadavg", no_loadavg)
    assert not thawline._idle(runnable=unreadable)


def policy_of_fresh_process(env: dict[str, str]) -> list[str]:
    code = (
        "import os, thawline; from thawline.comparing.placement import side_by_side_env; "
        "print(os.environ['OMP_WAIT_POLICY'], os.environ.get('GOMP_SPINCOUNT'), thawline.OMP_CHOSEN_HERE, "
        "sorted(side_by_side_env().items()))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return out.split(" ", 3)


def test_the_policy_is_set_before_torch_loads_and_yours_is_kept() -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    policy, spin, chosen, workers = policy_of_fresh_process(base)
    assert (policy, spin) in {("ACTIVE", "30000"), ("PASSIVE", "0")} and chosen == "True"  # by the load at start
    assert workers.strip() == str(sorted(thawline.SHARED.items()))  # workers beside each other: passive
    policy, spin, chosen, workers = policy_of_fresh_process({**base, "OMP_WAIT_POLICY": "active"})
    assert (policy, spin, chosen, workers.strip()) == ("active", "None", "False", "[]")  # yours, for workers too
    assert side_by_side_env() == (dict(thawline.SHARED) if thawline.OMP_CHOSEN_HERE else {})
