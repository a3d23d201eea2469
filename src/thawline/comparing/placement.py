"""Where and how the trials of a comparison that train side by side run (`--jobs`, `--ray`): each worker's GPU,
its thread count and its OpenMP setting. No torch at import."""

from __future__ import annotations

import os
from collections.abc import Sequence


def side_by_side_env() -> dict[str, str]:
    """The OpenMP setting of a process that trains beside others on the same cores: idle threads sleep at once
    (`thawline.SHARED`; thawline's short spin, chosen when the machine was idle at its start, made two workers'
    threads wait on each other: a seven-strategy demo compare with --jobs 2 ran at 14-17 img/s instead of ~55);
    nothing when you set OMP_WAIT_POLICY yourself."""
    import thawline

    return dict(thawline.SHARED) if thawline.OMP_CHOSEN_HERE else {}


def worker_devices(jobs: int, visible: Sequence[str], per_gpu: int = 1) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each of `jobs` workers: worker k the (k // per_gpu)-th of the `visible` GPUs
    (`--trials-per-gpu`: `per_gpu` small trainings packed on each; round-robin when there are more workers than
    places); None for every worker when there is no GPU (the environment is left as it is)."""
    return [visible[(k // per_gpu) % len(visible)] if visible else None for k in range(jobs)]


def visible_gpus(device: str) -> list[str]:
    """The GPUs a worker may be given: none when training on the CPU; else those of CUDA_VISIBLE_DEVICES when set
    (their names as given), or every GPU torch counts."""
    if device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def default_threads() -> int:
    """The intra-op thread count a sequential compare uses here (torch's, which OMP_NUM_THREADS sets): each worker
    uses it too, so its runs' floats are those of the sequential compare."""
    import torch

    return torch.get_num_threads()


def shared_cores_line(jobs: int, threads: int, cores: int) -> str | None:
    """What `--jobs` on a CPU says when its workers' threads outnumber the cores: each keeps the sequential thread
    count (so its runs are the sequential ones), and on 2 cores, quiet, the demo compare took 192 s with `--jobs 2`
    against 181 s without (docs/scale.md); None when every thread has a core."""
    if full_speed_jobs(jobs, "cpu", threads, cores) == jobs:
        return None
    return (f"[jobs] {jobs} workers x {threads} threads share {cores} CPU core(s): on an otherwise idle machine "
            "expect little or no speed-up (OMP_NUM_THREADS=1 gives each worker one thread, and its runs other "
            "last bits)")  # fmt: skip


def full_speed_jobs(jobs: int, device: str, threads: int | None = None, cores: int | None = None) -> int:
    """How many of `jobs` side-by-side trials run at full speed: each worker has its own GPU, or on a CPU the cores
    over each worker's threads (measured on 2 cores, quiet: two workers of 2 threads took 192 s for the demo compare
    that one process trains in 181 s, i.e. one at full speed)."""
    if jobs <= 1 or visible_gpus(device):
        return jobs
    threads = default_threads() if threads is None else threads
    cores = (os.cpu_count() or 1) if cores is None else cores
    return max(1, min(jobs, cores // max(1, threads)))
