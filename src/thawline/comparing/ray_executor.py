"""`compare --ray [ADDRESS]`: a scheduler's batch of requests trained as Ray core tasks on a Ray cluster
(`RayExecutor`; Ray is the optional extra `thawline[ray]`, imported only here and only when asked for).

Ray only places the tasks: the schedule stays this process's (`run_schedule` hands over a whole batch and decides
once all of it is done, so halving rungs and raced folds never depend on which trial finished first, as they would
with Ray Tune's asynchronous ASHA). Each task runs `pool.run_request`, the local pool's own function, so a run
folder holds what the sequential compare writes; the run folders (and the data) must be on storage every node sees
at the same path, and a task works in this process's working directory when its node has it, so relative paths of
the config mean the same there.

Each task asks Ray for `cpus_per_trial` CPUs and `gpus_per_trial` GPUs (fractional packs trials: 0.5 puts two on
a GPU); Ray sets the task's CUDA_VISIBLE_DEVICES to the GPU it placed it on, which the task leaves as it is. A task
trains with the thread count of a sequential compare here (`placement.default_threads`, not Ray's OMP_NUM_THREADS=1:
the thread count changes the floats), or, on a remote cluster, with its CPUs. This process's THAWLINE_* variables
(the cache folder, ...) are the tasks' too.

A task whose worker dies (killed, out of memory, its node lost) is retried from its last checkpoint
(`retries.py`); a task's own error is raised here: a ThawlineError as its one line, another with the worker's
traceback. Ctrl-C cancels the running tasks (a Ctrl-C in each run: resumable from its last checkpoint).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from thawline.comparing.placement import default_threads, side_by_side_env
from thawline.comparing.pool import WorkerFailed, WorkerSpec, run_request, trial_tag
from thawline.comparing.retries import DEFAULT_RETRIES, failed_line, resuming, retry_line
from thawline.comparing.trials import Request
from thawline.core.errors import ThawlineError

if TYPE_CHECKING:
    from thawline.training.run_state import RunResult

RAY_MISSING = "compare --ray needs Ray, which is not installed: pip install 'thawline[ray]'"
# the environment a comparison's trainings read (cache folder, fault injection, ...): the tasks get this process's
FORWARDED_PREFIX = "THAWLINE_"

Task = Callable[[WorkerSpec, Request], "RunResult"]


def import_ray() -> ModuleType:
    """Ray, or the one line that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise ThawlineError(RAY_MISSING) from None
    return ray


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)}


def in_ray_task(task: Task, spec: WorkerSpec, request: Request, threads: int, cwd: str) -> RunResult:
    """What a Ray task runs: `task` (run_request) in the driver's working directory with `threads` threads."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    import torch

    torch.set_num_threads(threads)
    return task(spec, request)


def worker_deaths(ray: ModuleType) -> tuple[type[BaseException], ...]:
    """Ray's errors for a task whose process or node went away (not an error the task raised)."""
    e = ray.exceptions
    return (e.WorkerCrashedError, e.NodeDiedError, e.OutOfMemoryError, e.LocalRayletDiedError)


class RayExecutor:
    """Runs each batch of requests as Ray tasks, each trained as `InProcessExecutor` would (same folders, same
    results); `run_batch` returns once every request is done or given up on (missing from its results, listed in
    `failed`). `address`: the cluster to join (None: Ray's default, the RAY_ADDRESS cluster or a new local one; an
    already initialised Ray is used as it is, and left running); `gpus_per_trial` None: 1 when the config trains on
    CUDA and the cluster has GPUs, else 0; `task`: what each task runs (tests wrap run_request)."""

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        address: str | None = None,
        gpus_per_trial: float | None = None,
        cpus_per_trial: float | None = None,
        retries: int = DEFAULT_RETRIES,
        threads: int | None = None,
        task: Task = run_request,
    ) -> None:
        self.ray = ray = import_ray()
        self.spec, self.retries, self.task = spec, retries, task
        self._owns = not ray.is_initialized()
        if self._owns:
            ray.init(address=address or None, log_to_driver=not spec.quiet)
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        if gpus_per_trial is None:
            gpus_per_trial = 1.0 if spec.config.device != "cpu" and cluster_gpus > 0 else 0.0
        self.cpus = 1.0 if cpus_per_trial is None else cpus_per_trial
        self.gpus = gpus_per_trial
        if threads is None:  # a remote node's share of CPUs is what the trial is given there
            threads = default_threads() if not address else max(1, int(self.cpus))
        self.threads = threads
        # Ray's own retries would rerun the task with the first try's options; a retry must resume (retries.py)
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus, "max_retries": 0}
        if env := {**forwarded_env(), **side_by_side_env()}:
            options["runtime_env"] = {"env_vars": env}
        self._remote = ray.remote(**options)(in_ray_task)
        self.failed: dict[Request, str] = {}
        self.on_done: Callable[[Request, float], None] | None = None  # each request's seconds, as its result arrives
        self._announced = False

    def run(self, request: Request) -> RunResult:
        done = self.run_batch([request])
        if request not in done:
            raise ThawlineError(self.failed[request])
        return done[request]

    def _submit(self, request: Request, spec: WorkerSpec) -> Any:
        name = f"thawline {request.trial.name} {trial_tag(request, spec.config.seed)}".strip()
        return self._remote.options(name=name).remote(self.task, spec, request, self.threads, os.getcwd())

    def run_batch(self, requests: Sequence[Request]) -> dict[Request, RunResult]:
        if not requests:
            return {}
        ray = self.ray
        if not self.spec.quiet and not self._announced:
            self._announced = True
            print(f"[ray] each trial a Ray task with {self.cpus:g} CPU(s) and {self.gpus:g} GPU(s), "
                  f"{self.threads} thread(s); cluster: {describe(ray.cluster_resources())}", flush=True)  # fmt: skip
        pending: dict[Any, tuple[Request, int]] = {self._submit(r, self.spec): (r, 0) for r in requests}
        submitted = dict.fromkeys(requests, time.perf_counter())  # a retry's seconds count from its resubmission
        results: dict[Request, RunResult] = {}
        deaths = worker_deaths(ray)
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                request, tries = pending.pop(ref)
                name = f"'{request.trial.name}' {trial_tag(request, self.spec.config.seed)}".strip()
                try:
                    results[request] = ray.get(ref)
                    if self.on_done is not None:
                        self.on_done(request, time.perf_counter() - submitted[request])
                except deaths as death:
                    why = first_line(death)
                    if tries < self.retries:
                        print(retry_line(name, tries + 1, self.retries, why), flush=True)
                        pending[self._submit(request, resuming(self.spec))] = (request, tries + 1)
                        submitted[request] = time.perf_counter()
                    else:  # the comparison prints it under its table
                        self.failed[request] = failed_line(name, self.retries, why)
                except ray.exceptions.RayTaskError as error:
                    raise_task_error(error)
        except BaseException:
            for ref in pending:  # a Ctrl-C in each running trial: it ends as a stopped run, resumable
                ray.cancel(ref)
            raise
        return {r: results[r] for r in requests if r in results}

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raise_task_error(error: Any) -> None:
    """A task's own error raised here: a ThawlineError as its one line, another as itself with the worker's
    traceback as its cause."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, ThawlineError):
        raise cause from None
    if isinstance(cause, BaseException):
        raise cause from WorkerFailed(str(error))
    raise WorkerFailed(str(error))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))
