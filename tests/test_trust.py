"""What a run folder promises: resume continues the same run (never a mix of two), a fresh run never overwrites
another, config.yaml reruns the run, no non-finite weights on disk, exports and evaluations replace nothing good."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import interrupt_after_checkpoint, make_image_folder, one_error_line, tiny_config

import thawline
from thawline.cli import commands, main
from thawline.comparing import executor
from thawline.core.config import DERIVED_KEYS, FIELD_NAMES, make_config, replace
from thawline.core.errors import ThawlineError
from thawline.deploy import export
from thawline.training import trainer
from thawline.training.checkpoint import load_checkpoint

TIMING_KEYS = {"seconds", "images_per_s", "rss_mb"}
TINY_ARGS = ["--model", "test_efficientnet", "--weights", "none", "--img-size", "32", "--batch-size", "8",
             "--workers", "1", "--lr", "3e-3"]  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "_report", lambda run_dir: None)  # report.html is tested elsewhere; it takes seconds


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One finished tiny run for the export and evaluate tests."""
    root = tmp_path_factory.mktemp("trust")
    data = make_image_folder(root / "data")
    cfg = tiny_config(data, strategy="full", epochs=1, cache_dir=str(root / "cache"))
    thawline.train(cfg, run_dir=root / "run", quiet=True)
    return {"dir": root / "run", "data": data}


# ---- 1. resume a folder from its own saved options ---------------------------------------------------------------


def test_train_resume_run_dir_continues_with_its_saved_config(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, no_report
) -> None:
    monkeypatch.chdir(tmp_path)  # a new runs/<name>-N folder would appear here
    run = tmp_path / "run"
    args = ["train", "--data", str(image_folder), *TINY_ARGS, "--strategy", "layer-wise", "--epochs", "2", "--quiet"]
    interrupt_after_checkpoint(monkeypatch)
    assert main([*args, "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert f"thawline train --resume {run}" in err, err  # Ctrl-C names the folder to resume
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1]

    # Flags that change what the run is are refused unless they equal the saved value; so are --config and --out.
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    one_error_line(capsys, "--epochs 3", "2", str(run))
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 2
    one_error_line(capsys, "--lr 0.1", "0.003")
    assert main(["train", "--resume", str(run), "--strategy", "full"]) == 2
    one_error_line(capsys, "--strategy full", "layer-wise")
    assert main(["train", "--resume", str(run), "--no-hflip"]) == 2
    one_error_line(capsys, "--no-hflip")
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "other")]) == 2
    one_error_line(capsys, "--out")
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    one_error_line(capsys, "no config.yaml")
    assert main(["train", "--data", str(image_folder), *TINY_ARGS, "--resume"]) == 2  # bare, and no --out
    one_error_line(capsys, "--resume DIR")
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1], "a refused resume changed the run"

    # The run's own options (nothing else given), an equal --epochs and a place option (--workers) continue it.
    assert main(["train", "--resume", str(run), "--epochs", "2", "--workers", "1", "--quiet"]) == 0
    assert str(run) in capsys.readouterr().out
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert [r["strategy"] for r in read_jsonl(run / "metrics.jsonl")] == ["layer-wise"] * 2
    assert (run / "summary.json").is_file() and not (tmp_path / "runs").exists()
    # The bare form still works: --resume --out DIR (a finished run: nothing left to train).
    assert main([*args, "--out", str(run), "--resume"]) == 0


def test_compare_resume_dir_continues_from_compare_yaml(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, no_report
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cmp"
    real_train = executor.train
    calls = []

    def second_strategy_interrupted(*a, **k):
        calls.append(k.get("run_dir"))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*a, **k)

    monkeypatch.setattr(executor, "train", second_strategy_interrupted)
    args = ["compare", "--data", str(image_folder), *TINY_ARGS, "--strategies", "head-only,full", "--epochs", "1"]
    assert main([*args, "--out", str(out), "--quiet"]) == 130
    assert f"thawline compare --resume {out}" in capsys.readouterr().err
    monkeypatch.setattr(executor, "train", real_train)
    stamp = (out / "head-only" / "summary.json").stat().st_mtime_ns

    assert main(["compare", "--resume", str(out), "--strategies", "full"]) == 2
    one_error_line(capsys, "--strategies full", "head-only,full")
    assert main(["compare", "--resume", str(out), "--epochs", "2"]) == 2
    one_error_line(capsys, "--epochs 2")
    assert main(["compare", "--resume", str(out), "--quiet"]) == 0
    assert (out / "head-only" / "summary.json").stat().st_mtime_ns == stamp, "a finished strategy was rerun"
    assert [r["epoch"] for r in read_jsonl(out / "full" / "metrics.jsonl")] == [1]
    assert len((out / "comparison.csv").read_text().splitlines()) == 3 and not (tmp_path / "runs").exists()

    # The API refuses a resume with other options than compare.yaml holds (before rewriting it).
    with pytest.raises(ThawlineError, match="--epochs 1, not 2"):
        thawline.compare(tiny_config(image_folder, epochs=2), ["head-only", "full"], out=out, resume=True, quiet=True)
    assert yaml.safe_load((out / "compare.yaml").read_text())["config"]["epochs"] == 1


# ---- 2. resuming never mixes two runs ----------------------------------------------------------------------------


def test_resume_with_other_options_is_refused(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(image_folder, strategy="full", epochs=2)
    run = tmp_path / "run"
    interrupt_after_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        thawline.train(cfg, run_dir=run, quiet=True)
    for changed, fragments in [
        (replace(cfg, lr=1e-2), ("--lr 0.003, not 0.01",)),
        (replace(cfg, epochs=3), ("--epochs 2, not 3",)),
        (replace(cfg, label_smoothing=0.0), ("--label-smoothing 0.1, not 0.0",)),
        (replace(cfg, seed=1), ("--seed 0, not 1",)),
    ]:
        with pytest.raises(ThawlineError) as e:
            thawline.train(changed, run_dir=run, resume=True, quiet=True)
        assert all(f in str(e.value) for f in fragments) and "\n" not in str(e.value), str(e.value)
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1]
    # Where and how it runs may change: workers, cache folder.
    result = thawline.train(replace(cfg, workers=2, cache_dir=str(tmp_path / "c2")), run_dir=run, resume=True,
                            quiet=True)  # fmt: skip
    assert [r["epoch"] for r in result.metrics] == [1, 2]


def test_fresh_train_into_a_folder_holding_a_run_is_refused(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for held in ("summary.json", "last.pt"):
        run = tmp_path / held
        run.mkdir()
        (run / held).write_text("{}")
        (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
        argv = ["train", "--data", str(image_folder), *TINY_ARGS, "--strategy", "head-only", "--epochs", "1"]
        argv += ["--out", str(run)]
        assert main(argv) == 2
        one_error_line(capsys, str(run), "holds a run", "--resume", "new --out")
        assert (run / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
        assert sorted(p.name for p in run.iterdir()) == sorted([held, "metrics.jsonl"])
    # compare into a folder with a finished strategy, without --resume: the same refusal
    (tmp_path / "cmp" / "head-only").mkdir(parents=True)
    (tmp_path / "cmp" / "head-only" / "summary.json").write_text("{}")
    with pytest.raises(ThawlineError, match="holds a run"):
        thawline.compare(tiny_config(image_folder, epochs=1), ["head-only"], out=tmp_path / "cmp", quiet=True)


def test_compare_resume_skips_only_a_strategy_trained_with_the_same_options(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    thawline.train(tiny_config(image_folder, strategy="head-only", epochs=1), run_dir=out / "head-only", quiet=True)
    stamp = (out / "head-only" / "summary.json").stat().st_mtime_ns
    with pytest.raises(ThawlineError, match=r"head-only' holds a run trained with --epochs 1, not 2"):
        thawline.compare(tiny_config(image_folder, epochs=2), ["head-only"], out=out, resume=True, quiet=True)
    assert (out / "head-only" / "summary.json").stat().st_mtime_ns == stamp
    (out / "compare.yaml").unlink()  # written by the refused call (epochs 2): a resume must match it
    again = thawline.compare(tiny_config(image_folder, epochs=1), ["head-only"], out=out, resume=True, quiet=True)
    assert (out / "head-only" / "summary.json").stat().st_mtime_ns == stamp, "a same-options run was retrained"
    assert again.winner == "head-only"


# ---- 3. config.yaml reruns the run -------------------------------------------------------------------------------


def test_a_runs_config_yaml_reruns_it(image_folder: Path, tmp_path: Path, capsys, no_report) -> None:
    cfg = tiny_config(image_folder, strategy="two-phase", class_weights="auto")
    first = thawline.train(cfg, run_dir=tmp_path / "first", quiet=True)
    saved = yaml.safe_load((first.run_dir / "config.yaml").read_text())
    assert set(saved) - set(FIELD_NAMES) <= set(DERIVED_KEYS), set(saved) - set(FIELD_NAMES) - set(DERIVED_KEYS)
    assert {"strategy_init", "phases", "num_train", "class_weight_values"} <= set(saved)

    again = tmp_path / "again"
    argv = ["train", "--config", str(first.run_dir / "config.yaml"), "--out", str(again), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]

    assert strip(read_jsonl(again / "metrics.jsonl")) == strip(read_jsonl(first.run_dir / "metrics.jsonl"))
    # Real unknown keys are still refused with the close match; a run's device under torchrun is its option.
    bad = tmp_path / "bad.yaml"
    bad.write_text((first.run_dir / "config.yaml").read_text() + "epocs: 3\n")
    with pytest.raises(ThawlineError, match="unknown option 'epocs'.*epochs"):
        make_config({}, str(bad))
    bad.write_text("device: cuda:0\nphases: []\nlr_auto: true\n")
    assert make_config({}, str(bad)).device == "cuda"
    with pytest.raises(ThawlineError, match="device 'cuda:0'"):
        make_config({"device": "cuda:0"})  # only a run file's resolved device is read back as its option


# ---- 4. never save non-finite weights ----------------------------------------------------------------------------


def test_non_finite_weights_are_never_saved(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setups = []
    real_setup = trainer.setup_run
    monkeypatch.setattr(trainer, "setup_run", lambda *a, **k: setups.append(real_setup(*a, **k)) or setups[-1])

    def poison_in_epoch_2(row: dict) -> None:
        if row["epoch"] == 2:
            with torch.no_grad():
                weight = next(setups[0].model.parameters())
                weight[(0,) * weight.dim()] = float("nan")

    run = tmp_path / "run"
    with pytest.raises(ThawlineError) as e:
        thawline.train(tiny_config(image_folder, strategy="full", epochs=3), run_dir=run, quiet=True,
                       on_epoch=poison_in_epoch_2)  # fmt: skip
    message = str(e.value)
    assert "epoch 2" in message and f"{run / 'last.pt'} keeps epoch 1" in message and "--lr" in message, message
    assert "\n" not in message
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(run / name)
        assert state["global_epoch"] == 1
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ---- 5. export and evaluate replace nothing good -----------------------------------------------------------------


def test_failed_export_check_leaves_the_earlier_export(
    finished: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = finished["dir"]
    assert main(["export", str(run)]) == 0
    onnx_bytes, prep_text = (run / "model.onnx").read_bytes(), (run / "preprocessing.json").read_text()
    capsys.readouterr()
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # every parity check fails
    assert main(["export", str(run), "--dynamic-batch"]) == 2
    one_error_line(capsys, "differs from PyTorch", "unchanged")
    assert (run / "model.onnx").read_bytes() == onnx_bytes
    assert (run / "preprocessing.json").read_text() == prep_text
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    target = tmp_path / "deploy" / "clf.onnx"
    assert main(["export", str(run), "--out", str(target)]) == 2
    one_error_line(capsys, "not written")
    assert not target.exists() and not (target.parent / "preprocessing.json").exists()


def test_evaluate_keeps_the_training_runs_predictions(
    finished: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = finished["dir"]
    kept = {p.name: p.read_bytes() for p in run.glob("predictions*.csv")}
    assert "predictions.csv" in kept
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    assert {p.name: p.read_bytes() for p in run.glob("predictions*.csv")} == kept
    assert main(["evaluate", str(run), "--split", "test", "--checkpoint", "last"]) == 0
    assert {p.name: p.read_bytes() for p in run.glob("predictions*.csv")} == kept
    val = json.loads((run / "evaluation_val.json").read_text())
    assert val["split"] == "val" and val["num_images"] == 24
    assert len((run / "evaluation_val.csv").read_text().splitlines()) == 25
    # A labelled folder named like a split gets its own files, never the split's.
    folder = tmp_path / "test"
    shutil.copytree(finished["data"] / "val", folder)
    test_report = (run / "evaluation_test.json").read_text()
    assert main(["evaluate", str(run), "--split", str(folder)]) == 0
    assert (run / "evaluation_folder-test.json").is_file() and (run / "evaluation_folder-test.csv").is_file()
    assert (run / "evaluation_test.json").read_text() == test_report
    assert {p.name: p.read_bytes() for p in run.glob("predictions*.csv")} == kept
