"""Every seed strategy paused at every epoch boundary and resumed: the same run, and after each resume only the
schedule's stages move and frozen BatchNorm statistics stay exactly as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

import thawline
from thawline.models.stages import stage_map
from thawline.models.weights import build_model
from thawline.training.checkpoint import load_checkpoint
from thawline.training.strategies import STRATEGIES

EPOCHS = 4
BN_STATS = ("running_mean", "running_var")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_pausing_at_every_epoch_boundary_keeps_the_schedule(strategy: str, image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, strategy=strategy, epochs=EPOCHS, model="test_resnet")
    straight = thawline.train(cfg, run_dir=tmp_path / "straight", quiet=True)
    out, states = tmp_path / "paused", []
    for epoch in range(1, EPOCHS):
        paused = thawline.train(cfg, run_dir=out, resume=epoch > 1, quiet=True, stop_after_epoch=epoch)
        assert paused.summary is None
        states.append(load_checkpoint(out / "last.pt")["model"])
    thawline.train(cfg, run_dir=out, resume=True, quiet=True)
    states.append(load_checkpoint(out / "last.pt")["model"])

    final = load_checkpoint(straight.run_dir / "last.pt")["model"]
    assert all(torch.equal(states[-1][k], final[k]) for k in final), "resumed run differs from the straight one"
    keys = ("train_loss", "val_loss", "val_acc", "lr")
    rows = read_jsonl(out / "metrics.jsonl")
    assert [[r[k] for k in keys] for r in rows] == [
        [r[k] for k in keys] for r in read_jsonl(straight.run_dir / "metrics.jsonl")
    ]
    stage_of = stage_map(build_model("test_resnet", "none", 3)).stage_of()
    phases = straight.summary["phases"]
    phase_of_epoch = [p for p in phases for _ in range(p["epochs"])]
    for epoch in range(2, EPOCHS + 1):  # each epoch trained right after a resume
        phase = phase_of_epoch[epoch - 1]
        before, after = states[epoch - 2], states[epoch - 1]
        trainable = set(phase["trainable"])
        for name in after:
            stage = stage_of.get(name.rsplit(".", 1)[0] + ".weight", stage_of.get(name))
            if stage is None:
                continue
            moved = not torch.equal(before[name], after[name])
            if name.endswith(BN_STATS):
                # BN statistics move only in training stages, and not at all under the "eval" policy
                if stage not in trainable or phase["bn"] == "eval":
                    assert not moved, f"{strategy} epoch {epoch}: frozen BN statistics {name} moved"
            elif name.endswith(("weight", "bias")) and stage not in trainable:
                assert not moved, f"{strategy} epoch {epoch}: {name} of frozen stage {stage} moved"
        moved_stages = {stage_of[n] for n in after if n in stage_of and not torch.equal(before[n], after[n])}
        assert moved_stages == trainable, f"{strategy} epoch {epoch}: moved {moved_stages}, schedule {trainable}"


def test_a_pause_asked_again_trains_nothing(image_folder: Path, tmp_path: Path) -> None:
    """A run paused at epoch 1 and asked again to pause at epoch 1 (a halving request retried after its worker died
    right after that checkpoint) stays paused there: nothing is trained, its rows are those of the pause."""
    cfg = tiny_config(image_folder, strategy="full", epochs=2)
    first = thawline.train(cfg, run_dir=tmp_path / "run", quiet=True, stop_after_epoch=1)
    weights = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    again = thawline.train(cfg, run_dir=tmp_path / "run", resume=True, quiet=True, stop_after_epoch=1)
    assert again.summary is None and again.metrics == first.metrics
    assert not (tmp_path / "run" / "summary.json").exists() and len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 1
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.equal(weights[k], after[k]) for k in weights)
