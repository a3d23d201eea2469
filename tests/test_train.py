"""End to end on tiny models and generated folders: run folder contents, caches, resume, compare."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import interrupt_after_checkpoint, make_image_folder, tiny_config

import thawline
from thawline.core.config import replace
from thawline.models.weights import build_model
from thawline.report.ranking import format_table
from thawline.training.checkpoint import load_checkpoint

METRIC_KEYS = {
    "strategy",
    "phase",
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "images_per_s",
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_train_writes_a_complete_run_folder(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = thawline.train(tiny_config(image_folder, strategy="two-phase"), run_dir=out, quiet=True)
    for name in ("config.yaml", "metrics.jsonl", "best.pt", "last.pt", "summary.json", "predictions.csv"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*")), "TensorBoard event file missing"
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and [r["phase"] for r in rows] == [1, 2]
    assert all(set(r) >= METRIC_KEYS for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary
    for key in ("best_val_acc", "test_acc", "wall_time_s", "trainable_params", "images_per_s", "peak_rss_mb"):
        assert summary[key] is not None, key
    # how the CPU ran it: this process's threads and its OpenMP wait policy (set by `import thawline` or by you)
    assert summary["cpu_threads"] == torch.get_num_threads()
    assert summary["omp_wait"].startswith(os.environ["OMP_WAIT_POLICY"])
    # head only, then everything: trainable params per phase are measured, not assumed
    n_head = sum(
        p.numel() for p in build_model("test_efficientnet", "none", 3).get_classifier().parameters()
    )
    assert summary["trainable_params"][0] == n_head
    assert summary["trainable_params"][1] == summary["total_params"]
    assert summary["best_val_acc"] == max(r["val_acc"] for r in rows)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["strategy"] == "two-phase" and config["classes"] == ["circle", "square", "stripes"]
    assert [p["trainable"] for p in config["phases"]][0] == [summary["phases"][0]["trainable"][0]]
    best = load_checkpoint(out / "best.pt")
    assert best["global_epoch"] == summary["best_epoch"]
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("split,path,label,pred") and len(lines) == 1 + summary["num_test"]


def test_training_learns_well_above_chance(tmp_path: Path) -> None:
    # scratch-trained tiny model on learnable patterns: accuracy must clearly beat 1/3
    data = make_image_folder(tmp_path / "data", {"train": 48, "val": 16})
    result = thawline.train(tiny_config(data, strategy="full", epochs=5, lr=1e-2), run_dir=tmp_path / "r", quiet=True)
    assert result.best_val_acc > 0.6


def test_feature_cache_matches_uncached_path(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, strategy="partial", epochs=2, hflip=False, weights="none")
    cached = thawline.train(cfg, run_dir=tmp_path / "cached", quiet=True)
    plain = thawline.train(replace(cfg, feature_cache=False), run_dir=tmp_path / "plain", quiet=True)
    rows_c, rows_p = read_jsonl(tmp_path / "cached/metrics.jsonl"), read_jsonl(tmp_path / "plain/metrics.jsonl")
    assert all(r["feature_cache"] for r in rows_c) and not any(r["feature_cache"] for r in rows_p)
    for a, b in zip(rows_c, rows_p, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-3)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=0.005)
    assert cached.summary["test_acc"] == pytest.approx(plain.summary["test_acc"], abs=0.005)


def test_first_epoch_runs_the_prefix_once_per_image_for_the_view_it_draws(image_folder: Path, tmp_path: Path) -> None:
    import json

    import numpy as np

    def filled_views(cache: Path) -> dict[str, np.ndarray]:  # split -> (images, views) bool: computed or not
        filled = {}
        for meta in (cache / "features").glob("*.json"):
            m = json.loads(meta.read_text())
            n, views = m["shape"][:2]
            bits = np.unpackbits(np.frombuffer(bytes.fromhex(m["filled"]), np.uint8), count=n * views)
            filled[{48: "train", 24: "val"}[n]] = bits.reshape(n, views).astype(bool)  # a row per image of the split
        return filled

    # the stepped head alone (the seed two-phase's one-epoch head phase is the same): each image once
    cfg = tiny_config(image_folder, strategy="head-only", epochs=1, hflip=True, cache_dir=str(tmp_path / "cache"),
                      head_solver=False)  # fmt: skip
    thawline.train(cfg, run_dir=tmp_path / "run", quiet=True)
    filled = filled_views(tmp_path / "cache")
    per_image = filled["train"].sum(1)  # train: plain and mirrored views, each image drawn once in epoch 1
    assert (per_image == 1).all(), "each train image's prefix ran exactly once, in the view its epoch drew"
    # val: all of it (evaluated every epoch), never mirrored (its file has train's two views, as a fold's val has)
    assert filled["val"][:, 0].all() and not filled["val"][:, 1].any()
    # head-only's solved candidate reads every image's plain view: the drawn views plus the plain ones not drawn
    solved = replace(cfg, head_solver=True, cache_dir=str(tmp_path / "cache3"))
    thawline.train(solved, run_dir=tmp_path / "solved", quiet=True)
    train = filled_views(tmp_path / "cache3")["train"]
    assert train[:, 0].all() and (train.sum(1) == 1 + train[:, 1]).all()
    # With another epoch ahead, the views epoch 1 did not draw are computed after it: later epochs only read.
    thawline.train(replace(cfg, epochs=2, cache_dir=str(tmp_path / "cache2")), run_dir=tmp_path / "r2",
                   quiet=True)
    assert filled_views(tmp_path / "cache2")["train"].all()


def test_resume_after_interrupt_equals_uninterrupted(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(image_folder, strategy="layer-wise", epochs=3)
    straight = thawline.train(cfg, run_dir=tmp_path / "straight", quiet=True)

    interrupt_after_checkpoint(monkeypatch, epoch=1)
    with pytest.raises(KeyboardInterrupt):
        thawline.train(cfg, run_dir=tmp_path / "resumed", quiet=True)
    resumed = thawline.train(cfg, run_dir=tmp_path / "resumed", resume=True, quiet=True)

    rows_a = read_jsonl(tmp_path / "straight/metrics.jsonl")
    rows_b = read_jsonl(tmp_path / "resumed/metrics.jsonl")
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]
    for a, b in zip(rows_a, rows_b, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert a[key] == b[key], key
    wa = load_checkpoint(tmp_path / "straight/last.pt")["model"]
    wb = load_checkpoint(tmp_path / "resumed/last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.summary["best_val_acc"] == straight.summary["best_val_acc"]


def test_seed_preset_is_the_seed_recipe() -> None:
    cfg = thawline.make_config(preset="seed")
    assert (cfg.optimizer, cfg.weight_decay, cfg.label_smoothing, cfg.schedule, cfg.batch_size, cfg.img_size) == (
        "adam",
        0.0,
        0.0,
        "constant",
        32,
        224,
    )
    assert cfg.warmup_epochs == 0


def test_compare_ranks_strategies_on_the_same_data(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = thawline.compare(tiny_config(image_folder, epochs=2), ["head-only", "full"], out=out, quiet=True)
    assert set(result.runs) == {"head-only", "full"}
    for name in ("head-only", "full"):
        assert (out / name / "summary.json").is_file()
    csv = (out / "comparison.csv").read_text().splitlines()
    assert csv[0].startswith("rank,strategy,best_val_acc") and len(csv) == 3
    accs = [r["best_val_acc"] for r in result.rows]
    assert accs == sorted(accs, reverse=True) and result.winner == result.rows[0]["strategy"]
    full = next(r for r in result.rows if r["strategy"] == "full")
    head = next(r for r in result.rows if r["strategy"] == "head-only")
    assert int(head["trainable_params"]) < int(full["trainable_params"])
    table = format_table(result.rows)
    assert "head-only" in table and "full" in table
    # resume skips finished strategies
    again = thawline.compare(
        tiny_config(image_folder, epochs=2), ["head-only", "full"], out=out, resume=True, quiet=True
    )
    assert again.rows[0]["strategy"] == result.rows[0]["strategy"]


def test_phase_results_with_test_each_phase(image_folder: Path, tmp_path: Path) -> None:
    result = thawline.train(tiny_config(image_folder, strategy="two-phase", test_each_phase=True),
                            run_dir=tmp_path / "r", quiet=True)
    phases = result.summary["phase_results"]
    assert [p["phase"] for p in phases] == [1, 2] and [p["train"] for p in phases] == ["head", "all"]
    assert all(0 <= p["test_acc_at_end"] <= 1 for p in phases)
    assert phases[1]["last_val_acc"] == result.metrics[-1]["val_acc"]


def test_small_data_repeats_passes_until_the_phase_has_its_minimum_steps(image_folder: Path, tmp_path: Path) -> None:
    # 48 train images, batch 8: 6 steps per pass. two-phase with 2 epochs: phase 1 (head, cached) and 2 (all).
    cfg = tiny_config(image_folder, strategy="two-phase", epochs=2, min_steps=20, head_steps=60)
    result = thawline.train(cfg, run_dir=tmp_path / "run", quiet=True)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    # min_steps 20 over the run's 2 epochs of 6 steps: 2 passes per epoch in every phase; the cached head phase
    # 60 steps in its one epoch: 10 passes
    assert [r["passes"] for r in rows] == [10, 2]
    n_train = result.summary["num_train"]
    assert rows[1]["images_per_s"] * rows[1]["seconds"] == pytest.approx(2 * n_train, rel=0.01)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["min_steps"] == 20 and config["head_steps"] == 60
    plain = thawline.train(replace(cfg, min_steps=0, head_steps=0), run_dir=tmp_path / "plain",
                           quiet=True)
    assert [r["passes"] for r in plain.metrics] == [1, 1]


def test_a_head_phase_on_cached_features_converges_in_one_phase(tmp_path: Path) -> None:
    # Two classes a linear head separates; one epoch of 6 steps leaves the head far from fitted, head_steps fits it.
    data = make_image_folder(tmp_path / "data", {"train": 24, "val": 12}, classes=("circle", "stripes"))
    short = tiny_config(
        data, strategy="head-only", epochs=1, lr=1e-2, label_smoothing=0.0, hflip=False, head_solver=False
    )  # the stepped head (two-phase's head phase, or --no-head-solver): head_solver is tested in test_headfit.py
    few = thawline.train(short, run_dir=tmp_path / "few", quiet=True)
    many = thawline.train(replace(short, head_steps=400), run_dir=tmp_path / "many", quiet=True)
    assert few.metrics[0]["passes"] == 1 and many.metrics[0]["passes"] == 67  # ceil(400 / 6)
    assert many.metrics[0]["feature_cache"]
    # measured: val loss 0.67 after one pass, 0.22 after 400 steps (random-init tiny model, seed 0)
    assert many.metrics[0]["val_loss"] < 0.5 * few.metrics[0]["val_loss"]
    assert many.metrics[0]["train_acc"] >= 0.95 and many.best_val_acc == 1.0
