"""`compare --jobs N`: a scheduler's batch of requests trained N at a time, each in a worker process of its own
(`LocalPoolExecutor`). Importing this module loads no torch: a worker sets its device and threads before it does.

Each worker is a `spawn`ed process that prepares its data itself (the decode-once cache on disk, filled by the
comparison before the first batch, is shared and locked) and trains each request it is given with an
`InProcessExecutor`, into the same run folder the sequential compare would use. What a run folder holds never
depends on the executor, with one condition on CPU: torch's float reductions depend on the number of intra-op
threads (measured: 1 thread vs 2 on this 2-core machine changed losses and weights in their last bits), so every
worker trains with the thread count a sequential compare would use in this environment
(`torch.get_num_threads()` here, which `OMP_NUM_THREADS` sets), not a share of the cores.
On CUDA worker k sees only GPU k (modulo the GPUs visible here; `CUDA_VISIBLE_DEVICES` is set before torch
initialises CUDA), so N trials on N GPUs, and more jobs than GPUs share them round-robin; `--trials-per-gpu M`
gives each GPU M workers in a row instead (worker k sees GPU k // M), which packs small trainings.

Console lines of the workers come through a pipe whole, printed here (so they never interleave mid-line and pass
the terminal's escaping); a line of a trial that a sequential compare would tell apart by order alone (another seed,
a fold) is prefixed with it. Ctrl-C: the workers ignore the terminal's SIGINT; this process stops each one with
SIGTERM, which ends its run as a Ctrl-C would (resumable from its last checkpoint), and the comparison then says
how to resume. A worker's ThawlineError is raised here as the same one line; another exception is raised here
with the worker's traceback; a worker that dies (killed, out of memory) is replaced and its trial resumed from its
last checkpoint, at most `retries` times, then reported failed (`retries.py`, the rule `compare --ray` follows).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shlex
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawline.comparing.placement import (
    default_threads,
    shared_cores_line,
    side_by_side_env,
    visible_gpus,
    worker_devices,
)
from thawline.comparing.retries import DEFAULT_RETRIES, failed_line, resuming, retry_line
from thawline.comparing.trials import Request
from thawline.core.errors import ThawlineError

if TYPE_CHECKING:
    from thawline.core.config import TrainConfig
    from thawline.training.run_state import RunResult

# How long stopped workers get to end their runs (the run's Ctrl-C path: close its tracker, free its memory) before
# they are killed; their last checkpoints are complete either way.
STOP_GRACE_S = 60.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to train the comparison's requests: the executor's arguments, with the data named (the
    config's folder, pooled into `folds` folds for `compare --folds`) instead of decoded."""

    config: TrainConfig
    out_dir: Path
    resume: bool
    quiet: bool
    folds: int | None = None


# ---- the worker process -------------------------------------------------------------------------------------------


class _Lines(io.TextIOBase):
    """A worker's sys.stdout or sys.stderr: each complete line goes to the parent as ("out", stream, line)."""

    def __init__(self, send: Callable[[tuple], None], stream: str) -> None:
        self._send, self._stream, self._partial = send, stream, ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._send(("out", self._stream, line))
        return len(text)

    def finish(self) -> None:
        if self._partial:
            self._send(("out", self._stream, self._partial))
            self._partial = ""


def _stop_requested(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _worker_main(conn: Connection, env: dict[str, str], threads: int | None) -> None:
    """A worker's life: its environment (the GPU it sees) before torch loads, its threads, then each job the parent
    sends ((function, args) -> its result or its error) until None or SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _stop_requested)  # the parent's stop: a Ctrl-C in the run
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    os.environ.update(env)
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    out, err = _Lines(send, "stdout"), _Lines(send, "stderr")
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        while (job := conn.recv()) is not None:
            function, args = job
            try:
                result = function(*args)
            except KeyboardInterrupt:
                out.finish(), err.finish()
                send(("stopped",))
                return
            except BaseException as e:  # noqa: BLE001 - every error goes to the parent, which raises it
                out.finish(), err.finish()
                send(("error", *_error_message(e)))
                continue
            out.finish(), err.finish()
            send(("done", result))
    except (KeyboardInterrupt, EOFError, OSError):  # stopped while idle, or the parent is gone
        return


def _error_message(e: BaseException) -> tuple[str, str, int, bytes | None]:
    """(kind, text, exit code, the pickled exception when it unpickles): a ThawlineError is its message (the
    parent raises it as its one line), anything else its traceback too."""
    if isinstance(e, ThawlineError):
        return "thawline", str(e), int(getattr(e, "exit_code", 2)), None
    try:
        blob: bytes | None = pickle.dumps(e)
        pickle.loads(blob)
    except Exception:  # noqa: BLE001 - an exception that does not survive pickling: its text only
        blob = None
    return "other", "".join(traceback.format_exception(e)), 1, blob


# ---- the parent's side ------------------------------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    """An unexpected error in a worker: its traceback there is the message."""


GAVE_UP = object()  # run_all's result of a job given up on after its worker died (on_death said so)


@dataclass
class _Worker:
    index: int
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    job: Any = None  # what it runs now (None: idle)
    prefix: str = ""


class WorkerPool:
    """Up to `jobs` spawned worker processes, started as the first batch needs them, that run picklable
    `(function, args)` jobs; worker k gets `env[k]` (e.g. its CUDA_VISIBLE_DEVICES) and `threads` intra-op threads.
    `run_all` runs a batch and returns its results in the batch's order; the pool is stopped on any error or
    Ctrl-C."""

    def __init__(self, jobs: int, *, envs: Sequence[dict[str, str]] | None = None, threads: int | None = None) -> None:
        self.jobs, self.threads = jobs, threads
        self.envs = list(envs) if envs is not None else [{} for _ in range(jobs)]
        self.workers: list[_Worker] = []
        self._context = get_context("spawn")
        self._names: list[str] = []
        self._after_death = ""

    def _start(self, index: int) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child, self.envs[index], self.threads),
                                        name=f"thawline-job-{index + 1}")  # fmt: skip
        # blocked until the worker ignores them: a Ctrl-C while it starts is the parent's alone
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()
        return _Worker(index, process, parent)

    def run_all(
        self,
        jobs: Sequence[tuple[Callable[..., Any], tuple]],
        *,
        prefixes: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        after_death: str = "",
        on_death: Callable[[int, str], tuple[Callable[..., Any], tuple] | None] | None = None,
        on_done: Callable[[int, float], None] | None = None,
    ) -> list[Any]:
        """Every job, at most `self.jobs` at a time; their results in order. `prefixes[i]`: put before each console
        line of job i; `names[i]`: what job i is, in the line that says its worker died (then `after_death`).
        `on_death(i, how)`, when given, decides about job i whose worker died: the job to run in its place (on a new
        worker), or None to give up on it (its result is then `GAVE_UP`); without it a death stops the pool.
        `on_done(i, seconds)`: called here as job i's result arrives, with the seconds since it was handed out."""
        self._names, self._after_death = list(names or []), after_death
        jobs = list(jobs)
        pending = deque(range(len(jobs)))
        results: dict[int, Any] = {}
        started: dict[int, float] = {}
        try:
            while pending or any(w.job is not None for w in self.workers):
                while pending and (worker := self._idle(len(jobs))) is not None:
                    i = pending.popleft()
                    worker.job, worker.prefix = i, prefixes[i] if prefixes else ""
                    started[i] = time.perf_counter()
                    worker.conn.send(jobs[i])
                for worker, message in self._messages():
                    i = worker.job
                    if message[0] == "done":
                        worker.job = None
                        results[i] = message[1]
                        if on_done is not None:
                            on_done(i, time.perf_counter() - started[i])
                    elif message[0] == "died" and on_death is not None:
                        instead = on_death(i, f"{self.describe(worker)} {self._bury(worker)}")
                        if instead is None:
                            results[i] = GAVE_UP
                        else:  # first in line: a retry keeps the batch's order of starts
                            jobs[i] = instead
                            pending.appendleft(i)
                    else:
                        self._raise(worker, message)
        except BaseException:
            self.stop()
            raise
        return [results[i] for i in range(len(jobs))]

    def _idle(self, wanted: int) -> _Worker | None:
        for k, worker in enumerate(self.workers):
            if worker.job is None:
                if not worker.process.is_alive():  # gone while idle (killed between batches): a new one in its place
                    worker.conn.close()
                    self.workers[k] = worker = self._start(worker.index)
                return worker
        if len(self.workers) < min(self.jobs, wanted):
            self.workers.append(self._start(len(self.workers)))
            return self.workers[-1]
        return None

    def _messages(self) -> list[tuple[_Worker, tuple]]:
        """The next messages of the busy workers (console lines printed here, not returned); a worker that is gone
        gives ("died",)."""
        busy = [w for w in self.workers if w.job is not None]
        by_handle: dict[Any, _Worker] = {}
        for w in busy:
            by_handle[w.conn] = w
            by_handle[w.process.sentinel] = w
        out: list[tuple[_Worker, tuple]] = []
        seen: set[int] = set()
        for handle in wait(list(by_handle)):
            worker = by_handle[handle]
            if worker.index in seen:
                continue
            seen.add(worker.index)
            try:
                while worker.conn.poll():
                    message = worker.conn.recv()
                    if message[0] == "out":
                        self._print(worker, message[1], message[2])
                        continue
                    out.append((worker, message))
                    break
                else:
                    if not worker.process.is_alive():
                        out.append((worker, ("died",)))
            except (EOFError, OSError):
                out.append((worker, ("died",)))
        return out

    @staticmethod
    def _print(worker: _Worker, stream: str, line: str) -> None:
        print(f"{worker.prefix}{line}" if line else line, file=sys.stderr if stream == "stderr" else sys.stdout,
              flush=True)  # fmt: skip

    def _raise(self, worker: _Worker, message: tuple) -> None:
        kind, i = message[0], worker.job
        if kind == "stopped":  # only after a stop this pool asked for
            raise KeyboardInterrupt
        if kind == "died":
            how = self._bury(worker)
            what = f" training {self._names[i]}" if i is not None and i < len(self._names) else ""
            raise ThawlineError(f"{self.describe(worker)}{what} {how} before it finished (out of memory?); "
                                f"the runs finished so far are kept{self._after_death}")  # fmt: skip
        _, what, text, code, blob = message
        worker.job = None
        if what == "thawline":
            error = ThawlineError(text)
            error.exit_code = code  # type: ignore[attr-defined]
            raise error
        original = pickle.loads(blob) if blob is not None else None
        if isinstance(original, BaseException):
            raise original from WorkerFailed(f"in {self.describe(worker)}:\n{text}")
        raise WorkerFailed(f"in {self.describe(worker)}:\n{text}")

    @staticmethod
    def _bury(worker: _Worker) -> str:
        """A dead worker made idle (the next job starts another in its place); how it ended."""
        worker.process.join(5)
        worker.job = None
        code = worker.process.exitcode
        return f"was killed (signal {-code})" if code is not None and code < 0 else f"exited (code {code})"

    def describe(self, worker: _Worker) -> str:
        return f"worker process {worker.index + 1} (pid {worker.process.pid})"

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """End every worker: SIGTERM (a busy one ends its run as Ctrl-C would), their last lines printed, then
        SIGKILL for any still there after `grace` seconds."""
        for worker in self.workers:
            if worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        try:
            while (alive := [w for w in self.workers if w.process.is_alive()]) and time.monotonic() < deadline:
                handles = {h: w for w in alive for h in (w.conn, w.process.sentinel)}
                for handle in wait(list(handles), min(1.0, max(0.0, deadline - time.monotonic()))):
                    self._drain(handles[handle])
        finally:  # also on a second Ctrl-C: the workers are ended, killed if need be
            self._end()

    def _drain(self, worker: _Worker) -> None:
        """A stopping worker's console lines printed; its other messages dropped."""
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                if message[0] == "out":
                    self._print(worker, message[1], message[2])
        except Exception:  # noqa: BLE001 - gone, or a message cut by the Ctrl-C that stops it: nothing more to read
            worker.process.join(1)

    def close(self) -> None:
        """Idle workers told to exit, then joined (killed when they do not exit)."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in self.workers:
            worker.process.join(10)
        self._end()

    def _end(self) -> None:
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join()
            worker.conn.close()
        self.workers = []


# ---- the executor -------------------------------------------------------------------------------------------------

_prepared: list[Any] = []  # in a worker: [(spec, its InProcessExecutor)], the data prepared once per spec


def _executor_for(spec: WorkerSpec) -> Any:
    """The worker's executor for `spec`, its data prepared on the first request (read from the disk cache the
    comparison filled; its lines and warnings, the comparison's own, are not repeated)."""
    if _prepared and _prepared[0][0] == spec:
        return _prepared[0][1]
    from contextlib import redirect_stderr, redirect_stdout

    from thawline.comparing.executor import InProcessExecutor
    from thawline.training.folds import prepare_folds
    from thawline.training.prepare import prepare_data

    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        if spec.folds:
            folded = prepare_folds(spec.config, spec.folds, quiet=True)
            executor = InProcessExecutor(spec.config, folded.pool, spec.out_dir, resume=spec.resume, quiet=spec.quiet,
                                         fold_data=folded.fold)  # fmt: skip
        else:
            data = prepare_data(spec.config, quiet=True)
            executor = InProcessExecutor(spec.config, data, spec.out_dir, resume=spec.resume, quiet=spec.quiet)
    _prepared[:] = [(spec, executor)]
    return executor


def run_request(spec: WorkerSpec, request: Request) -> RunResult:
    """In a worker: train `request` as the sequential compare would."""
    return _executor_for(spec).run(request)


def trial_tag(request: Request, first_seed: int) -> str:
    """What tells a trial's console lines apart when others of its strategy run at the same time: '(seed 3) ',
    '(fold 2) ', or '' (its lines name its strategy already)."""
    trial = request.trial
    parts = ([f"seed {trial.seed}"] if trial.seed != first_seed else []) + (
        [f"fold {trial.fold + 1}"] if trial.fold is not None else []
    )
    return f"({', '.join(parts)}) " if parts else ""


class LocalPoolExecutor:
    """Runs each batch of requests `jobs` at a time in worker processes (`WorkerPool`), each trained as
    `InProcessExecutor` would (same folders, same results); `run_batch` returns once the whole batch is done, so the
    scheduler decides on all of it, as with the sequential executor. `threads`: each worker's intra-op threads
    (default: this process's, which keeps every run's floats those of the sequential compare); `gpus`: the GPUs
    to hand out, `trials_per_gpu` workers on each (default: those visible here when the config trains on CUDA)."""

    def __init__(
        self,
        spec: WorkerSpec,
        jobs: int,
        *,
        threads: int | None = None,
        gpus: Sequence[str] | None = None,
        trials_per_gpu: int = 1,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self.spec, self.jobs, self.trials_per_gpu, self.retries = spec, jobs, trials_per_gpu, retries
        self.failed: dict[Request, str] = {}
        self.threads = default_threads() if threads is None else threads
        visible = visible_gpus(spec.config.device) if gpus is None else list(gpus)
        devices = worker_devices(jobs, visible, trials_per_gpu)
        envs = [{**side_by_side_env(), **({"CUDA_VISIBLE_DEVICES": d} if d is not None else {})} for d in devices]
        self.pool = WorkerPool(jobs, envs=envs, threads=self.threads)
        self.gpus = devices
        self._announced = False
        self.on_done: Callable[[Request, float], None] | None = None  # each request's seconds, as its result arrives

    def run(self, request: Request) -> RunResult:
        done = self.run_batch([request])
        if request not in done:
            raise ThawlineError(self.failed[request])
        return done[request]

    def run_batch(self, requests: Sequence[Request]) -> dict[Request, RunResult]:
        if not requests:
            return {}
        if not self.spec.quiet and not self._announced:
            self._announced = True
            each = "one GPU each" if self.trials_per_gpu == 1 else f"{self.trials_per_gpu} per GPU"
            on = f", {each}" if any(self.gpus) else f", {self.threads} thread(s) each"
            print(f"[jobs] up to {self.jobs} trials at once in worker processes{on}", flush=True)
            shared = None if any(self.gpus) else shared_cores_line(self.jobs, self.threads, os.cpu_count() or 1)
            if shared:
                print(shared, flush=True)
        first_seed, resume = self.spec.config.seed, shlex.quote(str(self.spec.out_dir))
        names = [f"'{r.trial.name}' {trial_tag(r, first_seed)}".strip() for r in requests]
        tries = [0] * len(requests)

        def on_death(i: int, how: str) -> tuple[Callable[..., Any], tuple] | None:
            """The retries.py rule: resumed from its last checkpoint, or given up on."""
            if tries[i] >= self.retries:
                self.failed[requests[i]] = failed_line(names[i], self.retries, how)
                return None
            tries[i] += 1
            print(retry_line(names[i], tries[i], self.retries, how), flush=True)
            return run_request, (resuming(self.spec), requests[i])

        results = self.pool.run_all([(run_request, (self.spec, r)) for r in requests],
                                    prefixes=[trial_tag(r, first_seed) for r in requests], names=names,
                                    after_death=f"; continue with `thawline compare --resume {resume}`",
                                    on_death=on_death, on_done=self._report_done(requests))  # fmt: skip
        return {r: result for r, result in zip(requests, results, strict=True) if result is not GAVE_UP}

    def _report_done(self, requests: Sequence[Request]) -> Callable[[int, float], None] | None:
        on_done = self.on_done
        return None if on_done is None else lambda i, seconds: on_done(requests[i], seconds)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> LocalPoolExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.pool.stop()
