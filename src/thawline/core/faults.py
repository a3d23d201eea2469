"""Deterministic fault injection for crash tests: `THAWLINE_KILL_AFTER=EVENT:N` makes the process kill itself with
SIGKILL (no cleanup, no flush: a power cut) right after the Nth occurrence of a named event.

    best:N         best.pt of global epoch N has been written, last.pt not yet (validation improved)
    checkpoint:N   last.pt of global epoch N has been written
    phase:N        phase N has been entered (optimizer ready, nothing trained yet)
    batch:N        this process's Nth optimizer step has been taken (mid-epoch: nothing of it is checkpointed)

Tests kill a run at an exact point and check that `--resume` ends where the uninterrupted run ends.
"""

from __future__ import annotations

import os
import signal

ENV = "THAWLINE_KILL_AFTER"


def after(event: str, n: int) -> None:
    if os.environ.get(ENV) == f"{event}:{n}":
        os.kill(os.getpid(), signal.SIGKILL)


_counts: dict[str, int] = {}


def tick(event: str) -> None:
    """Count one more `event` in this process and fire `after(event, count)`."""
    if ENV in os.environ:
        _counts[event] = _counts.get(event, 0) + 1
        after(event, _counts[event])
