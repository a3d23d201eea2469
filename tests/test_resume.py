"""kill -9 a real training process at several points, resume, and get exactly the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder

from thawline.training.checkpoint import link_checkpoint, load_checkpoint, save_checkpoint
from thawline.training.strategies import STRATEGIES

COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


def command(data: Path, out: Path, *extra: str, sub: str = "train") -> list[str]:
    args = [
        sys.executable,
        "-m",
        "thawline",
        sub,
        "--data",
        str(data),
        "--model",
        "test_efficientnet",
        "--weights",
        "none",
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "4",
        "--workers",
        "1",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    return args + (["--strategy", "layer-wise"] if sub == "train" else [])


def metric_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def run_until(cmd: list[str], ready, timeout: float = 120) -> None:
    """Start `cmd`, SIGKILL it as soon as ready() is true (or let it finish)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert b"Traceback" not in proc.stderr.read()


def finish(cmd: list[str]) -> None:
    proc = subprocess.run(
        [*cmd, "--resume"], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("resume") / "data", {"train": 24, "val": 8, "test": 4})


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run(
        command(data, out), capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr
    return out


def assert_same_run(a: Path, b: Path) -> None:
    rows_a, rows_b = read(a / "metrics.jsonl"), read(b / "metrics.jsonl")
    assert [r["epoch"] for r in rows_b] == [1, 2, 3, 4], "every epoch exactly once"
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: ra[k] for k in COMPARED} == {k: rb[k] for k in COMPARED}
    wa, wb = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ from the uninterrupted run"
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    assert (sa["best_val_acc"], sa["test_acc"]) == (sb["best_val_acc"], sb["test_acc"])


@pytest.mark.parametrize(
    "kill_point",
    ["mid-first-epoch", "right-after-phase-change", "after-epoch-3-log-before-checkpoint"],
)
def test_kill_and_resume_equals_uninterrupted(kill_point: str, data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    cmd = command(data, out)
    if kill_point == "mid-first-epoch":
        # config.yaml is written just before the first epoch starts
        run_until(cmd, lambda: (out / "config.yaml").exists())
    elif kill_point == "right-after-phase-change":
        # layer-wise with 4 epochs: phase 1 = epochs 1-2; kill once epoch 2 is logged (phase 2 starting)
        run_until(cmd, lambda: metric_lines(metrics) >= 2)
    else:
        run_until(cmd, lambda: metric_lines(metrics) >= 3)
    finish(cmd)
    assert_same_run(reference, out)


def test_kill_twice_and_leftover_temp_files(data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = command(data, out)
    run_until(cmd, lambda: metric_lines(out / "metrics.jsonl") >= 1)
    # a checkpoint write killed half-way leaves only a temp file; it must never be read back
    (out / ".last.pt.tmp-killed").write_bytes(b"\x80partial")
    run_until([*cmd, "--resume"], lambda: metric_lines(out / "metrics.jsonl") >= 3)
    finish(cmd)
    assert_same_run(reference, out)


def test_compare_resume_skips_finished_strategies(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    cmd = command(data, out, "--strategies", "head-only,full", sub="compare")
    # kill between the two strategies: head-only finished, full not started or barely
    run_until(cmd, lambda: (out / "head-only" / "summary.json").exists())
    stamp = (out / "head-only" / "summary.json").stat().st_mtime_ns
    finish(cmd)
    assert (out / "head-only" / "summary.json").stat().st_mtime_ns == stamp, "finished strategy was rerun"
    assert [r["epoch"] for r in read(out / "full" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert len((out / "comparison.csv").read_text().splitlines()) == 3


def test_same_seed_same_metrics(data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    proc = subprocess.run(
        command(data, out), capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr
    assert_same_run(reference, out)


def test_resume_with_another_model_is_one_line(data: Path, reference: Path, tmp_path: Path) -> None:
    cmd = command(data, reference)
    cmd[cmd.index("test_efficientnet")] = "test_resnet"
    proc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("thawline: error:") and "--model" in proc.stderr


# Every kind of kill point, as a fault event (faults.py).
KILL_EVENTS = ("best:1", "checkpoint:1", "checkpoint:2", "checkpoint:3", "phase:2", "batch:10")


class Killed(BaseException):
    """A kill at a fault point inside this process: nothing in thawline catches it, so the run stops there."""


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_resumes_exactly_from_every_kill_point(
    strategy: str, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each strategy stopped at each fault event (best.pt written but not last.pt, every epoch boundary, entering
    phase 2, mid-epoch after the 10th step), then `--resume`: bit-identical to the uninterrupted run. In this
    process, raised at the event: what resume reads is what the folder holds, and a fresh interpreter per kill
    point proves nothing more here; the real SIGKILL of every kind of kill point is the test below."""
    from thawline.cli import main
    from thawline.core import faults

    straight = tmp_path / "straight"
    argv = [c if c != "layer-wise" else strategy for c in command(data, straight, "--min-steps", "24")][3:]
    assert main(argv) == 0
    monkeypatch.setenv(faults.ENV, "in-process")  # faults.tick counts events only while it is set
    for event in KILL_EVENTS:

        def kill(name: str, n: int, event: str = event) -> None:
            if f"{name}:{n}" == event:
                raise Killed

        out = tmp_path / event.replace(":", "-")
        monkeypatch.setattr(faults, "_counts", {})
        monkeypatch.setattr(faults, "after", kill)
        try:
            code = main([c if c != str(straight) else str(out) for c in argv])
        except Killed:
            code = None
        monkeypatch.setattr(faults, "after", lambda name, n: None)
        if code == 0:  # a one-phase strategy never enters phase 2
            assert event == "phase:2" and len(STRATEGIES[strategy].phases) == 1
            continue
        assert code is None, f"{strategy} was not stopped at {event}"
        assert main(["train", "--resume", str(out), "--quiet"]) == 0
        assert_same_run(straight, out)


@pytest.mark.parametrize("strategy", ["two-phase"])  # a cached head phase, then every layer: every kind of event
def test_exact_kill_points_resume_to_the_uninterrupted_run(strategy: str, data: Path, tmp_path: Path) -> None:
    """SIGKILL at exact events (THAWLINE_KILL_AFTER: between best.pt and last.pt of epoch 1, right after every epoch
    boundary's checkpoint, right after entering phase 2, and mid-epoch after the 10th optimizer step), then
    `--resume RUN_DIR` in a fresh process: metrics and weights bit-identical to the run that was never stopped."""
    straight = tmp_path / "straight"
    # --min-steps 24 over 4 epochs of 3 steps: 2 passes per epoch (the multi-pass epochs resume exactly too)
    cmd = [c if c != "layer-wise" else strategy for c in command(data, straight, "--min-steps", "24")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(cmd, capture_output=True, timeout=300, env=env).returncode == 0

    def kill_then_resume(event: str) -> tuple[Path, subprocess.CompletedProcess, subprocess.CompletedProcess | None]:
        out = tmp_path / event.replace(":", "-")
        killed_cmd = [c if c != str(straight) else str(out) for c in cmd]
        killed = subprocess.run(killed_cmd, capture_output=True, text=True, timeout=300,
                                env={**env, "THAWLINE_KILL_AFTER": event})  # fmt: skip
        if killed.returncode != -9:
            return out, killed, None
        resumed = subprocess.run([sys.executable, "-m", "thawline", "train", "--resume", str(out), "--quiet"],
                                 capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
        return out, killed, resumed

    # The kill points are events, not times, and each has its own folder (the straight run filled the shared
    # caches): two at a time, one thread each, as most of each process's time is start-up (torch and timm imports).
    events = KILL_EVENTS
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        outcomes = list(pool.map(kill_then_resume, events))
    for event, (out, killed, resumed) in zip(events, outcomes, strict=True):
        if killed.returncode == 0:  # a one-phase strategy never enters phase 2
            assert event == "phase:2" and len(STRATEGIES[strategy].phases) == 1
            continue
        assert killed.returncode == -9 and resumed is not None, killed.stderr
        assert resumed.returncode == 0, resumed.stderr
        assert_same_run(straight, out)


def test_best_checkpoint_is_linked_as_last_and_parts_when_last_is_saved_again(tmp_path: Path) -> None:
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    save_checkpoint(best, {"w": torch.ones(3)})
    link_checkpoint(best, last)  # an improving epoch: one serialisation, two names
    assert last.samefile(best) and torch.equal(load_checkpoint(last)["w"], torch.ones(3))
    save_checkpoint(last, {"w": torch.zeros(3)})  # the next epoch did not improve
    assert not last.samefile(best)
    assert torch.equal(load_checkpoint(best)["w"], torch.ones(3)), "saving last.pt changed best.pt"
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_random_crops_resume_exactly(data: Path, reference: Path, tmp_path: Path) -> None:
    """--min-scale: the crops come from the epoch's seed, so a run killed mid-epoch resumes to the same weights."""
    straight, out = tmp_path / "straight", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = command(data, straight, "--min-scale", "0.4")
    assert subprocess.run(cmd, capture_output=True, timeout=300, env=env).returncode == 0
    killed_cmd = [c if c != str(straight) else str(out) for c in cmd]
    killed = subprocess.run(killed_cmd, capture_output=True, timeout=300, env={**env, "THAWLINE_KILL_AFTER": "batch:4"})
    assert killed.returncode == -9
    finish(killed_cmd)
    assert_same_run(straight, out)
    # the crops are real: the same command without them trains on other pixels from the first batch
    assert read(straight / "metrics.jsonl")[0]["train_loss"] != read(reference / "metrics.jsonl")[0]["train_loss"]
