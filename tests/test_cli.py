"""The CLI contract: subcommands exist, bad input is one line on stderr (close matches listed), never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from thawline.cli import main
from thawline.training.strategies import STRATEGIES


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "thawline", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("thawline: error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_strategies_lists_every_registered_strategy(capsys: pytest.CaptureFixture) -> None:
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for name in STRATEGIES:
        assert name in out
    assert "head x1 @ lr 0.0001 -> all x1 @ lr 1e-05" in out  # the seed two-phase recipe, readable


def test_unknown_strategy_model_and_option(image_folder: Path, tmp_path: Path) -> None:
    base = ["train", "--data", str(image_folder), "--out", str(tmp_path / "r"), "--img-size", "32"]
    assert_one_line_error(
        run_cli(*base, "--strategy", "two_phase", "--weights", "none", "--model", "test_resnet"), "two-phase"
    )
    assert_one_line_error(run_cli(*base, "--model", "resnet5", "--weights", "none"), "resnet50")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epocs: 3\n")
    assert_one_line_error(run_cli(*base, "--config", str(cfg)), "epocs", "epochs")
    cfg.write_text("optimizer: adamm\n")
    assert_one_line_error(run_cli(*base, "--config", str(cfg)), "adamm")


def test_missing_data_folder_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(
        run_cli("train", "--data", str(tmp_path / "nope"), "--model", "test_resnet", "--weights", "none"), "nope"
    )
    assert_one_line_error(
        run_cli("compare", "--data", str(tmp_path / "nope"), "--strategies", "head-only,fulll"), "full"
    )


def test_cli_train_prints_epoch_lines_and_summary(image_folder: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "train",
        "--data",
        str(image_folder),
        "--model",
        "test_resnet",
        "--weights",
        "none",
        "--strategy",
        "two-phase",
        "--epochs",
        "2",
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 0, proc.stderr
    epoch_lines = [line for line in proc.stdout.splitlines() if "val loss" in line]
    assert len(epoch_lines) == 2 and "[two-phase] phase 1/2" in epoch_lines[0]
    assert (tmp_path / "run" / "summary.json").is_file()
    # what was read comes first: the folder, its classes and each split's images
    first = proc.stdout.splitlines()[0]
    assert first == f"data: {image_folder}: 3 classes; 48 train, 24 val, 24 test images at 32 px"


def test_python_api_mirrors_the_cli() -> None:
    import thawline

    assert callable(thawline.train) and callable(thawline.compare)
    cfg = thawline.make_config(strategy="full", epochs=3)
    assert cfg.strategy == "full" and cfg.epochs == 3
