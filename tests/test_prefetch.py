"""Batches prepared ahead in a background thread give the same run, bit for bit; the final evaluation reuses the best
epoch's validation when that ran the whole model on full images, with the same predictions."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_after_checkpoint, tiny_config

import thawline
from thawline.training import trainer
from thawline.training.checkpoint import load_checkpoint
from thawline.training.prefetch import prefetch_default, prefetched

TIMING_KEYS = {"seconds", "images_per_s", "rss_mb"}  # how fast, not what was computed


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_prefetched_batches_are_the_batches_in_order() -> None:
    batches = [(torch.full((2, 3), float(i)), torch.tensor([i, i])) for i in range(7)]
    got = list(prefetched(batches, torch.device("cpu"), depth=2))
    assert len(got) == len(batches)
    assert all(torch.equal(x, bx) and torch.equal(y, by) for (x, y), (bx, by) in zip(got, batches, strict=True))


def test_a_stopped_consumer_stops_the_producer_and_errors_reach_the_consumer() -> None:
    closed = threading.Event()

    def endless():
        try:
            while True:
                yield torch.zeros(1), torch.zeros(1)
        finally:
            closed.set()

    stream = prefetched(endless(), torch.device("cpu"))
    next(stream)
    stream.close()  # what a `break` out of the epoch does
    assert closed.is_set(), "the source generator was closed before prefetched() returned"
    assert not any(t.name == "thawline-prefetch" for t in threading.enumerate())

    def failing():
        yield torch.zeros(1), torch.zeros(1)
        raise OSError("cache file removed")

    with pytest.raises(OSError, match="cache file removed"):
        list(prefetched(failing(), torch.device("cpu")))


def test_prefetch_default_and_its_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THAWLINE_PREFETCH", raising=False)
    assert prefetch_default(torch.device("cuda")) and not prefetch_default(torch.device("cpu"))
    monkeypatch.setenv("THAWLINE_PREFETCH", "1")
    assert prefetch_default(torch.device("cpu"))
    monkeypatch.setenv("THAWLINE_PREFETCH", "0")
    assert not prefetch_default(torch.device("cuda"))


def test_prefetched_training_is_bit_identical(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # flips and resized crops: every random draw of the batches is exercised; dropout draws on the main thread
    cfg = tiny_config(image_folder, strategy="full", epochs=2, hflip=True, min_scale=0.5)
    monkeypatch.setenv("THAWLINE_PREFETCH", "0")
    plain = thawline.train(cfg, run_dir=tmp_path / "plain", quiet=True)
    monkeypatch.setenv("THAWLINE_PREFETCH", "1")
    ahead = thawline.train(cfg, run_dir=tmp_path / "ahead", quiet=True)
    assert _rows(tmp_path / "plain") == _rows(tmp_path / "ahead")
    assert _same_weights(tmp_path / "plain/last.pt", tmp_path / "ahead/last.pt")
    assert (tmp_path / "plain/predictions.csv").read_bytes() == (tmp_path / "ahead/predictions.csv").read_bytes()
    assert plain.summary["test_acc"] == ahead.summary["test_acc"]


def test_prefetched_resume_equals_the_straight_run(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(image_folder, strategy="full", epochs=3)
    monkeypatch.setenv("THAWLINE_PREFETCH", "0")
    thawline.train(cfg, run_dir=tmp_path / "straight", quiet=True)
    monkeypatch.setenv("THAWLINE_PREFETCH", "1")
    interrupt_after_checkpoint(monkeypatch, epoch=1)
    with pytest.raises(KeyboardInterrupt):
        thawline.train(cfg, run_dir=tmp_path / "resumed", quiet=True)
    thawline.train(cfg, run_dir=tmp_path / "resumed", resume=True, quiet=True)
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "resumed")
    assert _same_weights(tmp_path / "straight/last.pt", tmp_path / "resumed/last.pt")


@pytest.mark.parametrize("splits", [{"train": 16, "val": 8}, {"train": 16, "val": 8, "test": 8}])
def test_final_evaluation_reuses_the_best_epochs_validation_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, splits: dict[str, int]
) -> None:
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", splits)
    cfg = tiny_config(data, strategy="full", epochs=3, lr=1e-2)
    evaluated: list[str] = []
    real_evaluate_split = trainer._evaluate_split

    def counting(run, split_name: str):
        evaluated.append(split_name)
        return real_evaluate_split(run, split_name)

    monkeypatch.setattr(trainer, "_evaluate_split", counting)
    thawline.train(cfg, run_dir=tmp_path / "reused", quiet=True)
    assert evaluated == (["test"] if "test" in splits else []), "val was evaluated a second time"

    real_finish = trainer._finish

    def without_reuse(run, loop, started):  # what _finish did before: the best weights evaluated afresh
        loop.best_eval = None
        return real_finish(run, loop, started)

    monkeypatch.setattr(trainer, "_finish", without_reuse)
    thawline.train(cfg, run_dir=tmp_path / "fresh", quiet=True)
    a, b = np.load(tmp_path / "reused/probabilities.npz"), np.load(tmp_path / "fresh/probabilities.npz")
    assert sorted(a.files) == sorted(b.files)
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
    for name in ("predictions.csv", "predictions_val.csv"):
        if (tmp_path / "fresh" / name).exists():
            assert (tmp_path / "reused" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    summary_a = json.loads((tmp_path / "reused/summary.json").read_text())
    summary_b = json.loads((tmp_path / "fresh/summary.json").read_text())
    timing = {"wall_time_s", "train_time_s", "images_per_s", "peak_rss_mb"}
    assert {k: v for k, v in summary_a.items() if k not in timing} == {
        k: v for k, v in summary_b.items() if k not in timing
    }
