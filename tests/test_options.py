"""Behaviour of the training options added together: --class-weights auto, --balanced-sampler, the leakage refusal,
--lr auto (and its resume), TensorBoard / W&B tracking, and run-to-run determinism on CPU."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import interrupt_after_checkpoint, make_image_folder

import thawline
from thawline.cli import commands, main
from thawline.core.config import TrainConfig
from thawline.data.batches import Batches
from thawline.training import lrfind, prepare, sources, trainer

TIMING_KEYS = {"seconds", "images_per_s", "rss_mb"}
TINY = {
    "model": "test_efficientnet",
    "weights": "none",
    "img_size": 32,
    "batch_size": 8,
    "workers": 1,
    "device": "cpu",
    "min_steps": 0,
    "head_steps": 0,
}
TINY_ARGS = ["--model", "test_efficientnet", "--weights", "none", "--img-size", "32", "--batch-size", "8"]
TINY_ARGS += ["--workers", "1", "--device", "cpu"]


def tiny_config(data: Path, **overrides) -> TrainConfig:
    return thawline.make_config(**{"data": str(data), **TINY, "epochs": 1, "lr": 3e-3, **overrides})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def skewed_folder(root: Path, big: int = 30, small: int = 6) -> Path:
    """Class 'circle' with `big` train images, 'square' with `small`; distinct seeds, so no file repeats."""
    make_image_folder(root, {"train": big, "val": 4}, classes=("circle",), seed=0)
    make_image_folder(root, {"train": small, "val": 4}, classes=("square",), seed=1)
    return root


@pytest.fixture
def no_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the prediction grid plot and the HTML report (seconds each on 2 CPU cores) where they are not tested."""
    monkeypatch.setattr(trainer, "_log_prediction_grid", lambda *args, **kwargs: None)
    monkeypatch.setattr(commands, "_report", lambda run_dir: None)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("thawline: error:"), err
    return lines[0]


def class_draws(batches: Batches) -> np.ndarray:
    return np.concatenate([y.numpy() for _, y in batches])


def label_batches(labels: np.ndarray, seed: int, balanced: bool, shuffle: bool = True) -> Batches:
    # read_rows returns the positions themselves: the labels drawn are all we look at
    return Batches(
        lambda idx: np.asarray(idx, dtype=np.int64).copy(),
        labels,
        np.arange(len(labels)),
        16,
        shuffle=shuffle,
        hflip=False,
        seed=seed,
        balanced=balanced,
    )


# ---- --class-weights auto -------------------------------------------------------------------------------------


def test_class_weights_helper_is_inverse_frequency() -> None:
    assert prepare.class_weights(np.array([0, 1, 2] * 5), 3).tolist() == [1.0, 1.0, 1.0]
    assert prepare.class_weights(np.array([0] * 30 + [1] * 6), 2).tolist() == pytest.approx([36 / 60, 36 / 12])
    # a class absent from train gets weight 0 (it cannot be predicted anyway), the others n / (k * count)
    assert prepare.class_weights(np.array([0, 0, 0, 2]), 3).tolist() == pytest.approx([4 / 9, 0.0, 4 / 3])


def test_class_weights_auto_and_balanced_sampler_reach_the_loss_and_the_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_extras: None
) -> None:
    data = skewed_folder(tmp_path / "data")
    losses: list[torch.Tensor | None] = []
    samplers: list[tuple[bool, bool]] = []
    real_loss, real_batches = torch.nn.CrossEntropyLoss, sources.Batches

    class SpyLoss(real_loss):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            losses.append(None if self.weight is None else self.weight.detach().cpu().clone())

    def spy_batches(*args, **kwargs):
        samplers.append((kwargs["shuffle"], kwargs.get("balanced", False)))
        return real_batches(*args, **kwargs)

    monkeypatch.setattr(prepare.nn, "CrossEntropyLoss", SpyLoss)
    monkeypatch.setattr(sources, "Batches", spy_batches)
    out = tmp_path / "run"
    thawline.train(
        tiny_config(data, strategy="full", class_weights="auto", balanced_sampler=True), run_dir=out, quiet=True
    )
    config = read_yaml(out / "config.yaml")
    assert config["classes"] == ["circle", "square"] and config["num_train"] == 36
    assert config["class_weights"] == "auto" and config["balanced_sampler"] is True
    # n / (k * count): 36 / (2 * 30) and 36 / (2 * 6)
    assert config["class_weight_values"] == pytest.approx([0.6, 3.0])
    weighted = [w for w in losses if w is not None]
    assert len(weighted) == 1 and weighted[0].tolist() == pytest.approx([0.6, 3.0])
    train_batches = [balanced for shuffle, balanced in samplers if shuffle]
    assert train_batches and all(train_batches), samplers
    assert not any(balanced for shuffle, balanced in samplers if not shuffle)  # val/test stay as they are


# ---- --balanced-sampler ---------------------------------------------------------------------------------------


def test_balanced_sampler_draws_classes_equally_and_is_seeded() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    plain = np.concatenate([class_draws(label_batches(labels, seed, balanced=False)) for seed in range(40)])
    balanced = np.concatenate([class_draws(label_batches(labels, seed, balanced=True)) for seed in range(40)])
    assert len(plain) == len(balanced) == 40 * len(labels)  # an epoch keeps its length
    assert (plain == 1).mean() == pytest.approx(0.1)  # a permutation: exactly the natural share
    assert (balanced == 1).mean() == pytest.approx(0.5, abs=0.04)  # 4000 draws: std ~0.008
    # three skewed classes: each about a third
    three = np.array([0] * 60 + [1] * 30 + [2] * 10)
    draws = np.concatenate([class_draws(label_batches(three, seed, balanced=True)) for seed in range(40)])
    assert np.bincount(draws, minlength=3) / len(draws) == pytest.approx([1 / 3] * 3, abs=0.04)
    # deterministic per seed, different across seeds
    a = class_draws(label_batches(labels, 7, balanced=True))
    assert np.array_equal(a, class_draws(label_batches(labels, 7, balanced=True)))
    positions = [np.concatenate([x.numpy() for x, _ in label_batches(labels, s, balanced=True)]) for s in (7, 8)]
    assert not np.array_equal(*positions)
    # only shuffled (train) batches are resampled: evaluation order stays the folder's
    in_order = class_draws(label_batches(labels, 7, balanced=True, shuffle=False))
    assert np.array_equal(in_order, labels)


# ---- leakage --------------------------------------------------------------------------------------------------


def test_leakage_refuses_to_train_unless_allowed_and_every_run_has_tensorboard_events(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "_report", lambda run_dir: None)  # report.html is not what is tested here
    data = make_image_folder(tmp_path / "data", {"train": 6, "val": 3})
    shutil.copyfile(data / "train/circle/circle_2.png", data / "val/circle/copy_of_train.png")
    out = tmp_path / "run"
    args = ["train", "--data", str(data), *TINY_ARGS, "--strategy", "full", "--epochs", "2", "--out", str(out)]

    assert main([*args, "--quiet"]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert "leakage" in line and "--allow-leakage" in line and "copy_of_train.png" in line
    assert not out.exists()  # refused before the run folder, let alone training

    assert main([*args, "--allow-leakage"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    warnings = [x for x in captured.err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "byte-identical" in warnings[0] and "allowed by --allow-leakage" in warnings[0]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]

    # TensorBoard: the per-epoch scalars (same values as metrics.jsonl) and the prediction grid image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(out.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"} <= set(tags["scalars"])
    val = events.Scalars("val_acc")
    assert [e.step for e in val] == [1, 2]
    assert [e.value for e in val] == pytest.approx([r["val_acc"] for r in rows], abs=1e-6)
    assert "prediction_grid" in tags["images"]
    grid = events.Images("prediction_grid")
    assert len(grid) == 1 and grid[0].step == 2 and grid[0].encoded_image_string[:4] == b"\x89PNG"


# ---- --lr auto ------------------------------------------------------------------------------------------------


def test_lr_auto_runs_the_range_test_trains_with_its_pick_and_resume_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_extras: None
) -> None:
    image_folder = make_image_folder(tmp_path / "data", {"train": 8, "val": 4})
    # constant LR without warm-up: the logged LR of head-only training is exactly the first-phase LR
    cfg = tiny_config(image_folder, strategy="head-only", epochs=2, lr="auto", schedule="constant", warmup_epochs=0)
    out = tmp_path / "run"
    interrupt_after_checkpoint(monkeypatch, epoch=1)
    with pytest.raises(KeyboardInterrupt):
        thawline.train(cfg, run_dir=out, quiet=True)

    found = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lr = found["suggested_lr"]
    assert isinstance(lr, float) and math.isfinite(lr) and 1e-7 <= lr <= 10
    config = read_yaml(out / "config.yaml")
    assert config["lr_auto"] is True and config["lr"] == lr
    assert read_jsonl(out / "metrics.jsonl")[0]["lr"] == pytest.approx(lr)

    # resume: no second range test (it would pick from a different model state), the saved LR is kept
    def no_second_range_test(*args, **kwargs):
        raise AssertionError("--resume reran the LR range test")

    monkeypatch.setattr(lrfind, "lr_find", no_second_range_test)
    assert lrfind.resolve_auto_lr(cfg, resume_dir=out)[0].lr == lr
    result = thawline.train(cfg, run_dir=out, resume=True, quiet=True)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and [r["lr"] for r in rows] == pytest.approx([lr, lr])
    assert result.summary["best_val_acc"] == max(r["val_acc"] for r in rows)
    assert read_yaml(out / "config.yaml")["lr"] == lr
    assert json.loads((out / "lr_find.json").read_text())["suggested_lr"] == lr


def test_resumed_lr_auto_run_keeps_lr_auto_in_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_extras: None
) -> None:
    # On resume resolve_auto_lr reads the saved LR and returns no range-test result; the rewritten config.yaml must
    # still say the LR was found automatically (it is not an explicit --lr).
    # the range test itself is covered above; a canned result keeps this to the run folder's bookkeeping
    canned = lrfind.LRFindResult(
        [1e-4, 1e-3], [1.0, 0.9], [1.0, 0.95], 2e-3, "min/10", 1e-3, None, None, False, {"strategy": "head-only"}
    )
    monkeypatch.setattr(lrfind, "lr_find", lambda *args, **kwargs: canned)
    monkeypatch.setattr(lrfind, "plot_lr_find", lambda path, *args: path.write_bytes(b""))
    image_folder = make_image_folder(tmp_path / "data", {"train": 6, "val": 3})
    cfg = tiny_config(image_folder, strategy="head-only", lr="auto")
    out = tmp_path / "run"
    thawline.train(cfg, run_dir=out, quiet=True)
    assert read_yaml(out / "config.yaml")["lr_auto"] is True
    thawline.train(cfg, run_dir=out, resume=True, quiet=True)  # finished run: nothing left to train
    config = read_yaml(out / "config.yaml")
    assert config["lr"] == 2e-3
    assert config.get("lr_auto") is True


# ---- W&B ------------------------------------------------------------------------------------------------------


def test_wandb_offline_logs_into_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(commands, "_report", lambda run_dir: None)
    image_folder = make_image_folder(tmp_path / "data", {"train": 6, "val": 3})
    wandb_home = tmp_path / "wandb-home"
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(wandb_home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "run"
    args = ["train", "--data", str(image_folder), *TINY_ARGS, "--strategy", "head-only", "--epochs", "1", "--quiet"]
    try:
        assert main([*args, "--lr", "3e-3", "--out", str(out), "--wandb", "thawline-test"]) == 0
    finally:
        # run.finish() returns a few ms before wandb-core's writer closes the .wandb log; teardown (what the CLI's
        # atexit hook does) waits for it, and stops the service this test started
        wandb.teardown()
    assert "Traceback" not in capsys.readouterr().err
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(p.name for p in out.rglob("*"))
    (log,) = runs[0].glob("run-*.wandb")  # the offline log `wandb sync` uploads: project, scalars, the grid image
    records = log.read_bytes()
    assert b"thawline-test" in records and b"val_acc" in records and b"train_loss" in records
    assert list(runs[0].glob("files/media/images/prediction_grid_*.png"))
    assert list(out.glob("events.out.tfevents.*"))  # TensorBoard as well


def test_wandb_missing_is_one_line_before_any_work(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError

    def no_work(*args, **kwargs):
        raise AssertionError("data was prepared although --wandb cannot work")

    monkeypatch.setattr(trainer, "prepare_data", no_work)
    out = tmp_path / "run"
    args = ["train", "--data", str(image_folder), *TINY_ARGS, "--epochs", "1", "--out", str(out), "--wandb"]
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "pip install wandb" in line
    assert not out.exists()


# ---- determinism ----------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_metrics(tmp_path: Path, no_extras: None) -> None:
    # both kinds of epoch (cached features in phase 1, whole model in phase 2), balanced draws and weighted loss
    data = skewed_folder(tmp_path / "data", big=12, small=4)
    cfg = tiny_config(data, strategy="two-phase", epochs=2, class_weights="auto", balanced_sampler=True)
    runs = [
        read_jsonl(thawline.train(cfg, run_dir=tmp_path / f"r{i}", quiet=True).run_dir / "metrics.jsonl")
        for i in range(2)
    ]
    assert [r["feature_cache"] for r in runs[0]] == [True, False]
    strip = [[{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows] for rows in runs]
    assert strip[0] == strip[1]


# ---- --min-scale (random resized crops) -------------------------------------------------------------------------


def test_crop_boxes_stay_inside_with_the_asked_area_and_aspect() -> None:
    from thawline.data.batches import crop_boxes, resized_crops

    boxes = crop_boxes(5000, 0.35, torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes >= 0).all() and (boxes <= 1 + 1e-12).all()
    assert (w * h >= 0.35 - 1e-9).all() and (w * h).max() > 0.95 and abs(float((w * h).mean()) - 0.675) < 0.02
    assert ((w / h >= 0.75 - 1e-9) & (w / h <= 4 / 3 + 1e-9)).all()
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(resized_crops(x, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4, dtype=torch.float64)), x)
    ramp = torch.arange(16.0).repeat(1, 3, 16, 1)  # value = column
    left = resized_crops(ramp, torch.tensor([[0.0, 0.0, 0.5, 1.0]], dtype=torch.float64))
    assert left[0, 0, 0, 0] == 0 and left[0, 0, 0, -1] <= 7.25 and (left.diff(dim=3) >= 0).all()  # the left half


def test_min_scale_crops_train_images_after_the_same_order_and_flips() -> None:
    from thawline.data.batches import Normalize

    n, side = 40, 16
    rows = np.zeros((n, side, side, 3), np.uint8)
    rows[:20] = np.arange(20, dtype=np.uint8)[:, None, None, None] * 10  # constant images: a crop keeps the value
    rows[20:] = (np.arange(side, dtype=np.uint8) * 15)[None, None, :, None]  # horizontal ramps
    identity = Normalize((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))

    def batches(min_scale: float, seed: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(Batches(lambda idx: rows[idx].copy(), np.arange(n), np.arange(n), 8, shuffle=True, hflip=True,
                            seed=seed, transform=identity, min_scale=min_scale))  # fmt: skip

    plain, cropped = batches(1.0), batches(0.3)
    assert [y.tolist() for _, y in plain] == [y.tolist() for _, y in cropped]  # same order (and flips, drawn first)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(cropped, batches(0.3), strict=True))  # seeded
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(cropped, batches(0.3, seed=4), strict=True))
    changed = 0
    for (xp, y), (xc, _) in zip(plain, cropped, strict=True):
        assert xc.shape == xp.shape
        for i, label in enumerate(y.tolist()):
            if label < 20:
                assert torch.allclose(xc[i], xp[i], atol=1e-4)  # a constant image stays itself
            else:
                changed += not torch.allclose(xc[i], xp[i], atol=1e-3)
                assert xc[i].min() >= -1e-4 and xc[i].max() <= 225 + 1e-4  # pixels of the image, resampled
    assert changed >= 15  # of the 20 ramps


@pytest.mark.parametrize("min_scale", [1.0, 0.5])
def test_min_scale_runs_the_frozen_prefix_on_every_batch(min_scale: float, tmp_path: Path, no_extras: None) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 6, "val": 3})
    cfg = tiny_config(data, strategy="head-only", epochs=1, min_scale=min_scale, cache_dir=str(tmp_path / "c"))
    thawline.train(cfg, run_dir=tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["feature_cache"] for r in rows] == [min_scale == 1.0]  # cached features would hold one crop


def test_min_scale_out_of_range_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path), "--min-scale", "1.5"]) == 2
    assert "--min-scale 1.5: must be in (0, 1]" in one_error_line(capsys.readouterr().err)
