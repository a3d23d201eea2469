"""The one rule for a trial whose worker dies (killed, out of memory, its node lost) while it trains, whichever
executor runs it (`compare --ray`): it is run again, resuming from its last checkpoint (exactly as if it had never
stopped), at most `retries` times; then it is reported failed in one line and the comparison ranks the others.
An error the trial raises itself (bad input, a bug) is not a death: it is raised as it is, never retried. No torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from thawline.core.errors import ThawlineError

Spec = TypeVar("Spec", bound=Any)  # an executor's frozen dataclass of what its workers train (pool.WorkerSpec)

# Two more tries: a preempted or lost node is usually a one-off, a trial that dies three times (out of memory) will
# die again; each retry continues from the last checkpoint, so at most one epoch per death is trained twice.
DEFAULT_RETRIES = 2


def check_retries(retries: int) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ThawlineError(f"--retries {retries}: must be 0 or more (the times a trial whose worker died is retried)")


def resuming(spec: Spec) -> Spec:
    """What a retry trains with: the same, continued from the run folder's last checkpoint."""
    return dataclasses.replace(spec, resume=True)


def retry_line(name: str, attempt: int, retries: int, why: str) -> str:
    return f"[retry] {name}: its worker died ({why}); retry {attempt} of {retries}, from its last checkpoint"


def failed_line(name: str, retries: int, why: str) -> str:
    """The one line of a trial given up on."""
    times = "once" if retries == 0 else f"{retries + 1} times"
    return f"[failed] {name}: its worker died {times} (last: {why}); not ranked, the other trials are"

