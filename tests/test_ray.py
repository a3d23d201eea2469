"""`compare --ray`: the trials as Ray core tasks (comparing/ray_executor.py) on a local Ray cluster started here
(2 CPUs, 2 logical GPUs) give the sequential compare's run folders; each task sees the GPU Ray gave it; a worker
SIGKILLed mid-trial is retried from its last checkpoint and changes nothing; a trial that keeps dying is reported
in one line and the others ranked; without Ray, one line names the extra."""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_image_folder, one_error_line, tiny_config
from test_jobs import assert_same_runs

import thawline
from thawline.cli import main
from thawline.comparing import comparison
from thawline.comparing.pool import WorkerSpec, run_request
from thawline.comparing.ray_executor import RayExecutor
from thawline.comparing.trials import Request, Trial

try:
    import ray
except ImportError:  # CI installs it (the test extra); only the last test here runs without it
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed: pip install 'thawline[ray]'")

STRATEGIES = "head-only,partial,full"


@pytest.fixture(scope="module")
def cluster() -> Any:
    """One local Ray cluster for the module (starting one takes seconds): 2 CPUs, so two trials at a time, and 2
    logical GPUs, which exist for placement only; the functions of this module go to its workers by value."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tasks take the driver's count: one thread, as in test_jobs
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, cluster: Any) -> dict[str, Any]:
    """The data, its cache and the sequential compare every test here compares against."""
    root = tmp_path_factory.mktemp("ray")
    data = make_image_folder(root / "data")
    config = tiny_config(data, cache_dir=str(root / "cache"), device="cpu")
    sequential = thawline.compare(config, STRATEGIES, root / "sequential", quiet=True, halving=True)
    return {"root": root, "config": config, "sequential": sequential.out_dir}


@needs_ray
def test_ray_trains_the_sequential_runs(shared: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    """Halving on Ray (a rung of paused requests, then the survivors continued, each a task): every run folder,
    its summary, metrics and weights, equal to the sequential compare's."""
    on_ray = thawline.compare(shared["config"], STRATEGIES, shared["root"] / "ray", halving=True, ray="")
    assert_same_runs(shared["sequential"], on_ray.out_dir)
    assert "[ray] each trial a Ray task with 1 CPU(s) and 0 GPU(s), 1 thread(s)" in capsys.readouterr().out
    assert ray.is_initialized()  # a Ray this process started is left running


@needs_ray
def test_a_worker_killed_mid_trial_is_retried(
    shared: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Every trial's worker SIGKILLs itself right after its first checkpoint (the trainer's fault point, set through
    THAWLINE_KILL_AFTER, which the tasks get from this process): each is retried, resumes from that checkpoint, and
    the compare's runs are the sequential compare's."""
    monkeypatch.setenv("THAWLINE_KILL_AFTER", "checkpoint:1")
    killed = thawline.compare(shared["config"], STRATEGIES, shared["root"] / "killed", halving=True, ray="")
    assert_same_runs(shared["sequential"], killed.out_dir)
    out = capsys.readouterr().out
    retried = [line for line in out.splitlines() if line.startswith("[retry]")]
    assert len(retried) == 3 and all("retry 1 of 2, from its last checkpoint" in line for line in retried), out
    assert not killed.failed


def die_on_full(spec: WorkerSpec, request: Request) -> Any:
    """A task whose worker dies whenever it trains 'full' (out of memory, say), however often it is retried."""
    if request.trial.strategy == "full":
        os.kill(os.getpid(), signal.SIGKILL)
    return run_request(spec, request)


@needs_ray
def test_a_trial_that_keeps_dying_fails_in_one_line(
    shared: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """'full' dies on its first try and its one retry: it is reported failed in one line under the table, and the
    others are ranked, their runs those of the sequential compare."""
    monkeypatch.setattr(comparison, "RayExecutor", functools.partial(RayExecutor, task=die_on_full))
    out = shared["root"] / "failing"
    result = thawline.compare(shared["config"], STRATEGIES, out, ray="", retries=1)
    assert [row["strategy"] for row in result.rows] and {r["strategy"] for r in result.rows} == {"head-only", "partial"}
    assert len(result.failed) == 1 and result.failed[0].startswith("[failed] 'full': its worker died 2 times")
    printed = capsys.readouterr().out.splitlines()
    assert printed.count(result.failed[0]) == 1 and sum(line.startswith("[retry] 'full'") for line in printed) == 1
    assert not (out / "full" / "summary.json").exists()
    assert all((out / name / "summary.json").is_file() for name in ("head-only", "partial"))  # trained whole


def gpu_probe(spec: WorkerSpec, request: Request) -> tuple[list[str], str | None]:
    """What the task was given; it waits (up to 60 s) until the batch's other task runs too, so both hold a GPU."""
    (spec.out_dir / f"{request.trial.strategy}.started").touch()
    deadline = time.monotonic() + 60
    while len(list(spec.out_dir.glob("*.started"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    return [str(g) for g in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES")


@needs_ray
def test_each_task_sees_its_own_gpu(tmp_path: Path, cluster: Any) -> None:
    """With a GPU per trial, Ray gives two trials at once the two logical GPUs and sets each one's
    CUDA_VISIBLE_DEVICES to its own, which the task leaves as it is (no CUDA needed to see what it is given)."""
    requests = [Request(Trial(name, None, 0)) for name in ("head-only", "full")]
    for gpus, folder in ((1.0, tmp_path / "whole"), (0.5, tmp_path / "half")):
        folder.mkdir()
        spec = WorkerSpec(tiny_config(Path("unused")), folder, resume=False, quiet=True)
        with RayExecutor(spec, gpus_per_trial=gpus, task=gpu_probe) as executor:
            seen = list(executor.run_batch(requests).values())
        assert all(ids == [visible] for ids, visible in seen), seen  # its own GPU, as Ray set it
        together = sorted(visible or "" for _, visible in seen)
        assert together == (["0", "1"] if gpus == 1.0 else ["0", "0"]), seen  # whole: two GPUs; halves: packed


def test_without_ray_one_line(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """--ray without Ray installed: one line naming the extra, before anything is written."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = ["compare", "--data", str(image_folder), "--model", "test_efficientnet", "--weights", "none",
            "--epochs", "1", "--strategies", "head-only", "--ray", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    one_error_line(capsys, "--ray needs Ray", "pip install 'thawline[ray]'")
    assert not (tmp_path / "out").exists()
