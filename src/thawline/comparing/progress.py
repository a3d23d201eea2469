"""The compare's progress line: after each finished trial, how many of how many, the time so far and the time left.

The time left is the plan's estimate of what remains (`estimate.py`) scaled by how the finished trials went: the
ratio of their measured seconds to their estimated ones. The worst case the plan assumed for `--halving` and
`--race` shrinks as the scheduler asks for less: when a batch comes, the strategies it leaves out are stopped, and
the later batches hold only strategies still running. With `--jobs N` each batch's remaining time is divided by the
trials it runs at once at full speed (`placement.full_speed_jobs`: on a CPU, the cores over each worker's
threads). On a terminal the line carries a bar; in a log it is a plain sentence.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace as with_fields
from typing import TextIO

from thawline.comparing.trials import Request, Trial

Lineage = tuple[str, str | None, int]
BAR_WIDTH = 20
READ_BACK = 0.1  # a request done in under this share of its estimate was read back, not trained


def lineage(request: Request) -> Lineage:
    trial = request.trial
    return trial.strategy, trial.model, trial.seed


def stage(request: Request) -> tuple[str | None, int | None, int | None]:
    """Which batch of the plan a request belongs to: its model, fold and rung."""
    return request.trial.model, request.trial.fold, request.until


def relabel(request: Request, trial: Trial) -> Request:
    """`request` for another strategy's trial at the same stage (its fold, its rung)."""
    return Request(with_fields(trial, fold=request.trial.fold), request.until)


def clock_text(seconds: float) -> str:
    """1:05:03, 4:07, 0:09: hours only when there are some."""
    s = max(0, round(seconds))
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts a compare's finished requests against its plan's batches (worst case) and says what is left.
    `seconds(request)`: the plan's estimate of a request; `jobs`: how many run at once at full speed; `stream`: where
    the line goes (None: nowhere, as with quiet); `tty`: the terminal form (default: whether `stream` is a
    terminal)."""

    def __init__(
        self,
        batches: Sequence[Sequence[Request]],
        seconds: Callable[[Request], float],
        *,
        jobs: int = 1,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.planned = [list(b) for b in batches]
        self.seconds, self.jobs, self.stream, self.clock = seconds, jobs, stream, clock
        self.tty = tty if tty is not None else bool(stream is not None and stream.isatty())
        self.started = clock()
        self.current: list[Request] = []  # the batch running now: its requests not finished yet
        self.later: list[list[Request]] = [list(b) for b in self.planned]  # the batches still to come
        self.finished: list[tuple[float, float]] = []  # (estimated, measured) seconds of each finished request
        self.last: Request | None = None

    def batch_started(self, batch: Sequence[Request]) -> None:
        """The scheduler's next batch: the plan's batch of its stage (those before it were skipped, as in a resume)
        gives way to it, and the later batches keep only the strategies it holds, as many as planned."""
        index = next((i for i, b in enumerate(self.later) if b and stage(b[0]) == stage(batch[0])), None)
        later = self.later[index + 1 :] if index is not None else self.later
        alive = {lineage(r): r.trial for r in batch}
        model = batch[0].trial.model  # a grid's models race apart: another model's batches are its own
        self.current = list(batch)
        self.later = [self.keep_alive(b, alive) if b and b[0].trial.model == model else b for b in later]

    def keep_alive(self, planned: list[Request], alive: dict[Lineage, Trial]) -> list[Request]:
        """A later batch with the strategies still running: those planned when alive, then the costliest others
        alive up to the planned count (halving's worst case: its keep counts)."""
        kept = [r for r in planned if lineage(r) in alive]
        planned_lineages = {lineage(r) for r in kept}
        others = [relabel(planned[0], t) for k, t in alive.items() if k not in planned_lineages]
        others.sort(key=lambda r: -self.seconds(r))
        return kept + others[: max(0, len(planned) - len(kept))]

    def done(self, request: Request, seconds: float) -> None:
        """A request finished in `seconds` (measured here): counted, and the line printed."""
        if request in self.current:
            self.current.remove(request)
        estimated = self.seconds(request)
        # a run read back (a resume's finished one) took no training: counted, but not as a measure of speed
        self.finished.append((estimated, seconds) if seconds >= READ_BACK * estimated else (0.0, 0.0))
        self.last = request
        if self.stream is not None:
            print(self.line(), file=self.stream, flush=True)

    @property
    def total(self) -> int:
        return len(self.finished) + len(self.current) + sum(map(len, self.later))

    def ratio(self) -> float:
        """Measured over estimated seconds of the finished requests (1 before any, or when they were estimated at
        nothing, as a resumed run read back)."""
        estimated = sum(e for e, _ in self.finished)
        measured = sum(m for _, m in self.finished)
        return measured / estimated if estimated > 0 and measured > 0 else 1.0

    def remaining(self) -> float:
        """Seconds left: each batch still to run (the current one's unfinished requests) at the plan's estimate,
        `jobs` at a time, scaled by the finished requests' ratio."""
        batches = [self.current, *self.later]
        left = sum(sum(map(self.seconds, b)) / max(1, min(self.jobs, len(b))) for b in batches if b)
        return self.ratio() * left

    def elapsed(self) -> float:
        return self.clock() - self.started

    def line(self) -> str:
        done, total, elapsed, left = len(self.finished), self.total, self.elapsed(), self.remaining()
        if self.tty:
            filled = round(BAR_WIDTH * done / max(1, total))
            bar = "█" * filled + "░" * (BAR_WIDTH - filled)
            return f"{bar} trial {done} of {total} · {clock_text(elapsed)} elapsed · ~{clock_text(left)} left"
        name = f" ({self.last.trial.name})" if self.last is not None else ""
        return (f"progress: trial {done} of {total} done{name}, {clock_text(elapsed)} elapsed, about "
                f"{clock_text(left)} left (estimated)")  # fmt: skip


def progress_stream(quiet: bool) -> TextIO | None:
    return None if quiet else sys.stdout
