"""`compare --jobs N`: trials trained N at a time in worker processes (comparing/pool.py) give the sequential
compare's run folders; each worker sees its own GPU and threads; errors, refusals and Ctrl-C end in one line."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_image_folder, one_error_line, tiny_config

import thawline
from thawline.cli import main
from thawline.comparing.options import check_jobs
from thawline.comparing.placement import full_speed_jobs, shared_cores_line, side_by_side_env
from thawline.comparing.pool import GAVE_UP, LocalPoolExecutor, WorkerFailed, WorkerPool, WorkerSpec, worker_devices
from thawline.core.errors import ThawlineError
from thawline.training.runfolder import RunInterrupted

STRATEGIES = "head-only,partial,two-phase"  # two-phase and head-only fill one feature cache
# what differs between two trainings of the same run: how long they took, how much memory they held, and how idle
# OpenMP threads waited (side-by-side workers sleep at once)
TIMING = {"wall_time_s", "train_time_s", "images_per_s", "peak_rss_mb", "peak_gpu_mb", "seconds", "rss_mb", "omp_wait"}


def run_folders(out: Path) -> dict[str, dict[str, Any]]:
    """Every run folder of a compare (by its path in it): its summary and metrics without the timings, and its
    final and best weights."""
    runs = {}
    for summary in sorted(out.rglob("summary.json")):
        run = summary.parent
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        runs[str(run.relative_to(out))] = {
            "summary": {k: v for k, v in json.loads(summary.read_text()).items() if k not in TIMING},
            "metrics": [{k: v for k, v in row.items() if k not in TIMING} for row in rows],
            "weights": {name: load_weights(run / name) for name in ("best.pt", "last.pt")},
        }
    return runs


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_runs(a: Path, b: Path) -> None:
    ra, rb = run_folders(a), run_folders(b)
    assert list(ra) == list(rb) and ra
    for name in ra:
        assert ra[name]["summary"] == rb[name]["summary"], name
        assert ra[name]["metrics"] == rb[name]["metrics"], name
        for ckpt, weights in ra[name]["weights"].items():
            other = rb[name]["weights"][ckpt]
            assert all(torch.equal(weights[k], other[k]) for k in weights), (name, ckpt)  # bit for bit


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Every compare here on one thread (the workers take this process's count): on the shared 2-core machine the
    tests take a third of the time they take on two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The data, its cache and the sequential compare every test here compares against."""
    root = tmp_path_factory.mktemp("jobs")
    data = make_image_folder(root / "data")
    config = tiny_config(data, cache_dir=str(root / "cache"))
    sequential = thawline.compare(config, STRATEGIES, root / "sequential", quiet=True, halving=True, seeds=2)
    folds = thawline.compare(config, STRATEGIES, root / "folds", quiet=True, folds=2)
    return {"root": root, "config": config, "sequential": sequential.out_dir, "folds": folds.out_dir}


def test_jobs_trains_the_sequential_runs(shared: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    """Halving (a rung of paused requests, then the survivors continued) on two seeds, two trials at a time: every
    run folder, its summary, metrics and weights, equal to the sequential compare's; the console lines come whole,
    another seed's prefixed."""
    pooled = thawline.compare(shared["config"], STRATEGIES, shared["root"] / "pooled", halving=True, seeds=2, jobs=2)
    assert_same_runs(shared["sequential"], pooled.out_dir)
    out = capsys.readouterr().out
    assert "[jobs] up to 2 trials at once in worker processes" in out
    epoch_lines = [line for line in out.splitlines() if " epoch " in line and "train loss" in line]
    assert epoch_lines and all(line.startswith(("[", "(seed 1) [")) for line in epoch_lines), out
    assert any(line.startswith("(seed 1) [") for line in epoch_lines)


def test_ctrl_c_stops_the_workers_and_resumes(shared: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the workers train a cross-validated compare (here: on the first epoch line they send): they
    stop, and the compare folder resumes and ends with the sequential compare's runs and answer."""
    out = shared["root"] / "interrupted"
    started: list[Any] = []
    real_print = WorkerPool._print

    def interrupt(worker: Any, stream: str, line: str) -> None:
        real_print(worker, stream, line)
        if " epoch " in line and "interrupted" not in started:
            started.append("interrupted")  # once: the workers' last lines then print as they stop
            raise KeyboardInterrupt

    real_start = WorkerPool._start

    def start(self: WorkerPool, index: int) -> Any:
        started.append(self)
        return real_start(self, index)

    monkeypatch.setattr(WorkerPool, "_print", staticmethod(interrupt))
    monkeypatch.setattr(WorkerPool, "_start", start)
    with pytest.raises(RunInterrupted) as stopped:
        thawline.compare(shared["config"], STRATEGIES, out, quiet=False, folds=2, jobs=2)
    assert stopped.value.command == "compare" and stopped.value.folder == out
    pools = [p for p in started if isinstance(p, WorkerPool)]
    assert pools and "interrupted" in started and all(not pool.workers for pool in pools)  # every worker ended
    monkeypatch.undo()
    assert (out / "compare.yaml").is_file() and not (out / "comparison.json").exists()  # a compare to resume
    # resumed in this process (a resume may take another --jobs; one process here saves the workers' start-up)
    resumed = thawline.compare(shared["config"], STRATEGIES, out, quiet=True, folds=2, resume=True)
    assert_same_runs(shared["folds"], out)
    answer = json.loads((shared["folds"] / "comparison.json").read_text())["answer"]
    assert resumed.answer is not None
    assert {k: v for k, v in resumed.answer.items() if k != "runs"} == {k: v for k, v in answer.items() if k != "runs"}


def test_a_worker_killed_mid_trial_is_retried(
    shared: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Every trial's worker process SIGKILLs itself right after the trial's first checkpoint (the trainer's fault
    point; the workers inherit THAWLINE_KILL_AFTER): the pool starts another worker, which resumes the trial from that
    checkpoint, and the compare's runs are the sequential compare's, with one retry line per trial."""
    monkeypatch.setenv("THAWLINE_KILL_AFTER", "checkpoint:1")
    killed = thawline.compare(shared["config"], STRATEGIES, shared["root"] / "killed", halving=True, seeds=2, jobs=2)
    monkeypatch.delenv("THAWLINE_KILL_AFTER")
    assert_same_runs(shared["sequential"], killed.out_dir)
    out = capsys.readouterr().out
    retried = [line for line in out.splitlines() if line.startswith("[retry]")]
    # 3 strategies x 2 seeds start a trial; halving's continued survivors are past their first checkpoint
    assert len(retried) == 6 and all("retry 1 of 2, from its last checkpoint" in line for line in retried), out
    assert not killed.failed


def test_each_worker_sees_its_own_device_and_threads() -> None:
    """Worker k gets the k-th GPU (a fake CUDA_VISIBLE_DEVICES: no GPU is needed to see what a worker is given) and
    the thread count it was told."""
    assert worker_devices(3, ["3", "5"]) == ["3", "5", "3"]  # more jobs than GPUs: round-robin
    assert worker_devices(2, []) == [None, None]  # no GPU: the environment as it is
    spec = WorkerSpec(tiny_config(Path("unused"), device="cpu"), Path("unused"), resume=False, quiet=True)
    executor = LocalPoolExecutor(spec, 2, threads=1, gpus=["3", "5"])
    pool = executor.pool
    # each worker's GPU, beside the OpenMP setting of side-by-side workers (none when this process inherited yours:
    # under pytest-xdist the controller's import of thawline chose one for every worker)
    shared_cores = side_by_side_env()
    assert pool.envs == [{**shared_cores, "CUDA_VISIBLE_DEVICES": g} for g in ("3", "5")] and pool.threads == 1
    try:
        probe = (os.getenv, ("CUDA_VISIBLE_DEVICES",))
        assert pool.run_all([probe, probe]) == ["3", "5"]
        first = pool.workers[0].process
        first.kill()  # a worker gone between batches: the next batch starts another with its device
        first.join()
        assert pool.run_all([probe, probe]) == ["3", "5"] and pool.workers[0].process is not first
        assert pool.run_all([(torch.get_num_threads, ()), (torch.get_num_threads, ())]) == [1, 1]
        assert os.environ.get("CUDA_VISIBLE_DEVICES") != "3"  # this process's own environment is untouched
    finally:
        executor.close()
    assert not pool.workers


def test_workers_whose_threads_outnumber_the_cores_say_so() -> None:
    """On a CPU each worker keeps the sequential thread count; when the workers' threads outnumber the cores, one
    line says that an idle machine gains little (measured: the demo compare on 2 cores, docs/scale.md)."""
    assert shared_cores_line(2, 1, 2) is None and shared_cores_line(4, 4, 16) is None
    line = shared_cores_line(2, 2, 2)
    assert line is not None and line.startswith("[jobs] 2 workers x 2 threads share 2 CPU core(s)")
    assert "\n" not in line and "OMP_NUM_THREADS=1" in line


def test_the_estimate_counts_only_the_workers_that_run_at_full_speed() -> None:
    """Each worker keeps the sequential thread count: on a CPU, as many run at full speed as the cores hold (2 cores,
    2 threads each: one; measured on the demo compare), on GPUs one per worker."""
    assert full_speed_jobs(2, "cpu", threads=2, cores=2) == 1
    assert full_speed_jobs(2, "cpu", threads=1, cores=2) == 2
    assert full_speed_jobs(4, "cpu", threads=4, cores=16) == 4 and full_speed_jobs(8, "cpu", threads=4, cores=16) == 4
    assert full_speed_jobs(1, "cpu", threads=8, cores=2) == 1 and full_speed_jobs(3, "cpu", threads=8, cores=2) == 1


def test_worker_errors_come_back_whole() -> None:
    """A worker's ThawlineError is raised here as itself (the CLI's one line), another error as its type with the
    worker's traceback, a worker that dies as one line naming its job; each stops the pool, as an error stops a
    sequential compare."""
    pool = WorkerPool(1)  # no thread count: the worker loads no torch
    with pytest.raises(ThawlineError, match=r"^--jobs 0: must be 1 or more"):
        pool.run_all([(check_jobs, (0,))])
    assert not pool.workers
    with pytest.raises(ValueError, match="invalid literal") as error:
        pool.run_all([(int, ("x",))])
    assert isinstance(error.value.__cause__, WorkerFailed) and "Traceback" in str(error.value.__cause__)
    assert not pool.workers
    with pytest.raises(ThawlineError, match=r"^worker process 1 \(pid \d+\) training 'full' exited \(code 3\)"):
        pool.run_all([(os._exit, (3,))], names=["'full'"])  # a worker that dies (killed, out of memory): one line


def test_refused_in_one_line(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--jobs 0, and --jobs 2 under torchrun (WORLD_SIZE > 1), are refused in one line before anything is written."""
    base = ["compare", "--data", str(image_folder), "--model", "test_efficientnet", "--weights", "none",
            "--epochs", "1", "--strategies", "head-only"]  # fmt: skip
    assert main([*base, "--jobs", "0", "--out", str(tmp_path / "a")]) == 2
    one_error_line(capsys, "--jobs 0", "1 or more")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*base, "--jobs", "2", "--out", str(tmp_path / "b")]) == 2
    one_error_line(capsys, "--jobs 2", "torchrun", "drop --jobs")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_trials_per_gpu_packs_workers() -> None:
    """--trials-per-gpu M: worker k sees GPU k // M (round-robin past the last GPU), and a worker really runs with
    the CUDA_VISIBLE_DEVICES it was given (a fake one: no GPU is needed)."""
    assert worker_devices(5, ["3", "5"], per_gpu=2) == ["3", "3", "5", "5", "3"]
    assert worker_devices(2, [], per_gpu=2) == [None, None]
    spec = WorkerSpec(tiny_config(Path("unused"), device="cpu"), Path("unused"), resume=False, quiet=True)
    executor = LocalPoolExecutor(spec, 3, threads=1, gpus=["3", "5"], trials_per_gpu=2)
    pool = executor.pool
    pool.threads = None  # the probe needs no torch: the workers start faster
    try:
        probe = (os.getenv, ("CUDA_VISIBLE_DEVICES",))
        assert pool.run_all([probe, probe, probe]) == ["3", "3", "5"]
    finally:
        executor.close()


def test_placement_refused_in_one_line(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--ray and --trials-per-gpu combinations that cannot apply are refused in one line each, before anything is
    written (none of them needs Ray installed)."""
    base = ["compare", "--data", str(image_folder), "--model", "test_efficientnet", "--weights", "none",
            "--epochs", "1", "--strategies", "head-only", "--out", str(tmp_path / "out")]  # fmt: skip
    refused = {
        ("--ray", "--jobs", "2"): ("--ray with --jobs 2", "drop --jobs"),
        ("--gpus-per-trial", "1"): ("--gpus-per-trial", "pass --ray"),
        ("--cpus-per-trial", "2"): ("--cpus-per-trial", "pass --ray"),
        ("--trials-per-gpu", "2"): ("--trials-per-gpu 2", "pass --jobs N"),
        ("--trials-per-gpu", "0", "--jobs", "2"): ("--trials-per-gpu 0", "1 or more"),
        ("--ray", "--trials-per-gpu", "2"): ("--trials-per-gpu 2 is for --jobs", "--gpus-per-trial 0.5"),
        ("--ray", "--gpus-per-trial", "2"): ("--gpus-per-trial 2", "one GPU"),
        ("--ray", "--cpus-per-trial", "0"): ("--cpus-per-trial 0", "more than 0"),
        ("--retries", "-1"): ("--retries -1", "0 or more"),
    }
    for flags, fragments in refused.items():
        assert main([*base, *flags]) == 2, flags
        one_error_line(capsys, *fragments)
    assert not (tmp_path / "out").exists()


def die_once(marker: str) -> str:
    """A job whose worker SIGKILLs itself on its first try (the marker file says it had one)."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return "alive"


def test_a_dead_worker_is_replaced_and_its_job_retried(tmp_path: Path) -> None:
    """With `on_death` (the retries.py rule of LocalPoolExecutor), a worker that dies is replaced and its job runs
    again in its place, or is given up on while the other jobs of the batch finish."""
    pool = WorkerPool(1)
    deaths: list[str] = []
    marker = str(tmp_path / "died")

    def retry_once(i: int, how: str) -> Any:
        deaths.append(how)
        return (die_once, (marker,)) if len(deaths) == 1 else None

    try:
        assert pool.run_all([(die_once, (marker,)), (abs, (-2,))], on_death=retry_once) == ["alive", 2]
        assert len(deaths) == 1 and deaths[0].startswith("worker process 1") and "was killed (signal 9)" in deaths[0]
        assert pool.run_all([(os._exit, (3,)), (abs, (-2,))], on_death=retry_once) == [GAVE_UP, 2]
        assert "exited (code 3)" in deaths[1]
    finally:
        pool.close()
