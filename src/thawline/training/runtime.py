"""Process-wide memory setting that makes CPU training fast: keep freed memory for reuse (glibc only).

glibc serves every allocation above its mmap threshold (32 MB at most) with fresh mmap pages and unmaps them on
free, so each training step page-faults, and the kernel zeroes, every large activation again. At 224 px and
batch 32 the activations are 50-150 MB each: on the 2-core dev machine that was about half of a lite0 step
(full fine-tune 11-12 img/s with the default, 20-22 img/s with freed memory kept; ResNet-50 at 112 px 13.5 -> 16.1).
The price is memory: freed blocks stay in the process for the next step, and the heap needs a few steps to settle
(lite0 full fine-tune at 224 px: peak RSS 4.15 GB instead of 3.52 GB). Memory is not returned to the system
after training in a long-lived process (up to 2 GB of free heap top is kept).
Set THAWLINE_MALLOC=default to leave the allocator alone.

Kept pages stay resident until `release_freed_memory()` (malloc_trim): a run calls it between passes whose
working sets differ (the eager feature pass, the training epochs, the final full-image evaluation), so peak RSS is
the largest pass's working set, not their union (Lite0 partial at 224 px: 3.2 GB -> about 2.4 GB). The next pass
faults its pages in once, not every step. `MemoryMeter` reads the kernel's peak (VmHWM), so a peak between two
samples, in a pass that samples nothing, is still counted.
"""

from __future__ import annotations

import ctypes
import os
import sys

import psutil
import torch

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1  # free heap top kept (not trimmed) up to this size

_configured = False


def keep_freed_memory() -> bool:
    """Serve large tensors from the heap and keep freed memory; True when the setting is in effect.

    Idempotent and cheap; a no-op off glibc (macOS, Windows, musl) or with THAWLINE_MALLOC=default."""
    global _configured
    if _configured:
        return True
    if os.environ.get("THAWLINE_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _configured = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    return _configured


def release_freed_memory() -> bool:
    """Return the free heap that `keep_freed_memory` keeps to the system (glibc `malloc_trim(0)`: the free top and
    the free pages inside the heap); True when something was released.

    For the boundaries between passes with different working sets: the next pass faults its pages in once (about
    0.3 s per GB here), while without it the freed pages of every earlier pass stay resident. A no-op when the
    setting is off (glibc then unmaps large blocks itself) or off glibc."""
    if not _configured:
        return False
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


_STATUS = "/proc/self/status"


def _kernel_peak_bytes() -> int | None:
    """The kernel's peak resident set size of this process (VmHWM, Linux), or None where it cannot be read."""
    try:
        with open(_STATUS, "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_kernel_peak() -> bool:
    """Start the kernel's peak RSS (VmHWM) afresh at the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _kernel_peak_bytes() is not None


class MemoryMeter:
    """Peak resident memory of this process during a run, and peak CUDA memory when used.

    On Linux the kernel's own peak (VmHWM, reset when the meter starts) is read, so a peak that falls between two
    samples (inside the feature pass or an evaluation, which do not sample) counts; elsewhere it is sampled."""

    def __init__(self, device: torch.device) -> None:
        self.proc = psutil.Process()
        self.kernel_peak = _reset_kernel_peak()
        self.peak = self.proc.memory_info().rss
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        hwm = _kernel_peak_bytes() if self.kernel_peak else None
        self.peak = max(self.peak, self.proc.memory_info().rss, hwm or 0)

    @property
    def peak_rss_mb(self) -> float:
        self.sample()
        return self.peak / 2**20

    @property
    def peak_gpu_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None


def omp_wait() -> str | None:
    """How this process's idle OpenMP threads wait (set by `import thawline` unless you set it): a run's speed on a
    CPU depends on it, so its summary records it."""
    policy, spin = os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")
    if policy is None:
        return None if spin is None else f"GOMP_SPINCOUNT={spin}"
    return policy if spin is None else f"{policy}, GOMP_SPINCOUNT={spin}"
