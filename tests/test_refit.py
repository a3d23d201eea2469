"""compare --folds K --refit: the answer's best single strategy trained once more on train and val pooled, with no
val split, to the mean best epoch of its folds; the trainer's run without a val split (final_epoch, exact resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, one_error_line, tiny_config

import thawline
from thawline.cli import main
from thawline.comparing.refit import refit_epoch
from thawline.core.errors import ThawlineError
from thawline.deploy.evaluate import evaluate_run
from thawline.deploy.load import load_run
from thawline.training.checkpoint import load_checkpoint
from thawline.training.folds import prepare_folds
from thawline.training.run_state import RunResult
from thawline.training.trainer import train


def _runs(*best_epochs: int) -> list[RunResult]:
    return [RunResult(Path("."), {"best_epoch": e}) for e in best_epochs]


def test_the_refit_epoch_is_the_mean_best_epoch_rounded_half_up() -> None:
    assert refit_epoch(_runs(2, 3, 3)) == 3  # 2.67
    assert refit_epoch(_runs(1, 2)) == 2  # 1.5 rounds up, not to even
    assert refit_epoch(_runs(2, 2, 3)) == 2  # 2.33
    assert refit_epoch(_runs(4)) == 4


@pytest.fixture(scope="module")
def refitted(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("refit")
    data = make_image_folder(root / "data", {"train": 8, "val": 4, "test": 6})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THAWLINE_CACHE_DIR", str(root / "cache"))
        result = thawline.compare(tiny_config(data, epochs=3), ["head-only", "full"], root / "cmp", folds=2,
                                  refit=True, quiet=True)  # fmt: skip
    return root, result


def test_refit_trains_the_best_single_strategy_on_the_pool_to_its_folds_mean_best_epoch(refitted) -> None:
    root, result = refitted
    cmp = root / "cmp"
    doc = json.loads((cmp / "comparison.json").read_text())
    entry, single = doc["refit"], doc["answer"]["single"]["strategy"]
    assert entry["strategy"] == single
    folds = [json.loads((cmp / single / f"fold-{f}" / "summary.json").read_text()) for f in (1, 2)]
    assert entry["fold_best_epochs"] == [s["best_epoch"] for s in folds]
    assert entry["epoch"] == refit_epoch(_runs(*entry["fold_best_epochs"]))
    run = cmp / single / "refit"
    assert entry["run"] == str(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_train"] == entry["images"] == 3 * 12 and summary["num_val"] == 0  # train and val pooled
    assert summary["best_epoch"] == entry["epoch"] and summary["best_val_acc"] is None
    assert summary["test_acc"] == entry["test_acc"] is not None
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, entry["epoch"] + 1))  # no epoch past the refit's
    assert all(r["val_acc"] is None and r["val_loss"] is None for r in rows)
    assert not (run / "predictions_val.csv").exists() and (run / "predictions.csv").is_file()
    # an ordinary run folder: it loads as one model and evaluates to the accuracy its summary holds
    model, cfg = load_run(run)
    assert not hasattr(model, "members") and cfg["strategy"] == single
    assert evaluate_run(run, write=False).accuracy == pytest.approx(summary["test_acc"], abs=1e-6)


def test_a_resumed_refit_is_reused_and_the_console_names_it(refitted, capsys) -> None:
    root, _ = refitted
    before = (root / "cmp" / "comparison.json").read_text()
    weights = load_checkpoint(Path(json.loads(before)["refit"]["run"]) / "best.pt")["model"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THAWLINE_CACHE_DIR", str(root / "cache"))
        again = thawline.compare(tiny_config(root / "data", epochs=3), ["head-only", "full"], root / "cmp", folds=2,
                                 refit=True, resume=True)  # fmt: skip
    out = capsys.readouterr().out
    assert "refit: " in out and "pooled images to epoch" in out
    assert again.out_dir == root / "cmp"
    after = load_checkpoint(Path(json.loads(before)["refit"]["run"]) / "best.pt")["model"]
    assert all(torch.equal(weights[k], after[k]) for k in weights)


def test_a_run_without_val_ends_at_its_final_epoch_and_resumes_bit_identical(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 6, "val": 3})
    cfg = tiny_config(data, epochs=3, strategy="full")
    pool = prepare_folds(cfg, 2, quiet=True).pool  # train and val pooled, no val split
    assert "val" not in pool.splits
    with pytest.raises(ThawlineError, match="without a val split needs"):
        train(cfg, data=pool, run_dir=tmp_path / "none", quiet=True)
    whole = train(cfg, data=pool, run_dir=tmp_path / "whole", quiet=True, final_epoch=2)
    assert whole.summary is not None and whole.summary["best_epoch"] == 2
    paused = train(cfg, data=pool, run_dir=tmp_path / "cut", quiet=True, final_epoch=2, stop_after_epoch=1)
    assert paused.summary is None
    resumed = train(cfg, data=pool, run_dir=tmp_path / "cut", quiet=True, final_epoch=2, resume=True)
    assert resumed.summary is not None and resumed.summary["best_epoch"] == 2
    a, b = (load_checkpoint(p / "best.pt")["model"] for p in (tmp_path / "whole", tmp_path / "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refit_without_folds_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    code = main(["compare", "--data", str(data), "--model", "test_efficientnet", "--weights", "none",
                 "--refit", "--out", str(tmp_path / "cmp")])  # fmt: skip
    assert code != 0
    line = one_error_line(capsys)
    assert "--refit" in line and "--folds" in line


def test_the_report_names_the_refit(refitted) -> None:
    from thawline.report.build import build_report

    root, _ = refitted
    html = Path(build_report(root / "cmp")).read_text()
    assert 'id="refit"' in html and "trained once more" in html
