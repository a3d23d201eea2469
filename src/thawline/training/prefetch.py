"""Batches prepared one step ahead in a background thread: the row reads, flips, crops, normalisation and the copy
to the device of batch k+1 overlap step k.

The batches are the same tensors in the same order: every random draw of an epoch (order, flips, crop boxes) comes
from the `Batches` generator seeded for it, which draws them all when iteration starts, and no preparation step
touches the global RNG (dropout's), so a prefetched run is bit-identical to an unprefetched one. Only sources whose
preparation reads nothing of the model may be prefetched: the lazily filled feature cache runs the frozen prefix
(switching modules to eval mode) and stays on the main thread.

`THAWLINE_PREFETCH=1` / `0` forces it on / off; by default it is on for CUDA and off on a CPU (on the 2-core dev
machine a batch's preparation was under 1% of a lite0 step, and a second thread's torch ops compete with the
step's intra-op threads; see docs/performance.md).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator

import torch

Batch = tuple[torch.Tensor, torch.Tensor]

_DONE = object()  # the source is exhausted
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer stopped


def prefetch_default(device: torch.device) -> bool:
    """Whether batches are prefetched on `device` unless THAWLINE_PREFETCH says otherwise."""
    forced = os.environ.get("THAWLINE_PREFETCH", "").strip().lower()
    if forced in ("1", "true", "on", "yes"):
        return True
    if forced in ("0", "false", "off", "no"):
        return False
    return device.type == "cuda"


def to_device(batch: Batch, device: torch.device) -> Batch:
    """(x, y) on `device`; from the CPU through pinned memory, so the copy runs while the step computes."""
    if device.type != "cuda":
        return batch
    x, y = batch
    if x.device.type == "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
    if y.device.type == "cpu":
        y = y.pin_memory().to(device, non_blocking=True)
    return x, y


def prefetched(batches: Iterable[Batch], device: torch.device, depth: int = 1) -> Iterator[Batch]:
    """`batches`, each moved to `device`, produced by a background thread at most `depth` batches ahead.

    An error of the producer is raised here, at the batch it failed on; when the consumer stops early (a break,
    an error, Ctrl-C) the producer is stopped and joined before this generator closes, so nothing keeps reading
    the caches after the epoch."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(batches)
        try:
            for batch in source:
                if not put(to_device(batch, device)):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a stopped generator's cleanup runs here, not later in another thread
                close()

    worker = threading.Thread(target=produce, name="thawline-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
