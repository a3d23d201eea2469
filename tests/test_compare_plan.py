"""`compare --dry-run` and the progress line: the plan's counts equal the hand-computed ones, the dry run trains and
writes nothing, and the time left is the plan's remaining estimate scaled by the finished trials."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import one_error_line, tiny_config

import thawline
from thawline import ThawlineError
from thawline.cli import main
from thawline.comparing.options import CompareOptions
from thawline.comparing.plan import build_plan
from thawline.comparing.progress import Progress, clock_text
from thawline.comparing.trials import Request, Trial

# conftest's folder: 3 classes x (16 train, 8 val, 8 test) images; batch 8 -> 6 steps a pass over train


def test_plan_counts_trials_steps_and_cached_phases(image_folder: Path) -> None:
    config = tiny_config(image_folder, epochs=4, min_steps=48, head_steps=0)  # 48 steps / (6 x 4 epochs): 2 passes
    plan = build_plan(config, CompareOptions(strategies=("head-only", "two-phase", "full"), seeds=2))
    assert [(t.strategy, t.seed) for t in plan.trials] == [
        ("head-only", 0), ("two-phase", 0), ("full", 0), ("head-only", 1), ("two-phase", 1), ("full", 1)]  # fmt: skip
    assert [len(b) for b in plan.batches] == [6]  # AllTrials: one batch
    head_only, two_phase, full = (plan.trials[Trial(n, None, 0)] for n in ("head-only", "two-phase", "full"))
    assert (head_only.n_train, head_only.n_val, head_only.n_test) == (48, 24, 24)
    (head,) = head_only.phases
    # 6 steps a pass x 2 passes x 4 epochs; the features: every train image in both flips (4 epochs) and val, once
    assert (head.cached, head.epochs, head.steps, head.train_images) == (True, 4, 48, 384)
    assert (head.feature_images, head.val_images) == (48 * 2 + 24, 4 * 24)
    assert head_only.finish_images == 24 + 24  # the best weights on test and val
    probe, thaw = two_phase.phases
    # the head phase reads the features head-only cached (same prefix); `all` trains on images
    assert (probe.cached, probe.steps, probe.feature_images) == (True, 24, 0)
    assert (thaw.train, thaw.cached, thaw.steps, thaw.first_trainable) == ("all", False, 24, 0)
    assert [(p.cached, p.steps) for p in full.phases] == [(False, 48)]
    # a second seed's head-only finds the cache filled
    assert plan.trials[Trial("head-only", None, 1)].phases[0].feature_images == 0
    # the head solver runs after a head that trains alone to the end (head-only), not before a thaw (two-phase)
    assert head.solved_head and not probe.solved_head
    # random crops need the prefix on every batch: nothing trains on cached features
    crops = build_plan(tiny_config(image_folder, epochs=4, min_scale=0.5), CompareOptions(strategies=("head-only",)))
    assert [p.cached for t in crops.trials.values() for p in t.phases] == [False]


def test_plan_of_halving_and_race_is_the_worst_case(image_folder: Path) -> None:
    config = tiny_config(image_folder, epochs=4)
    names = ("head-only", "two-phase", "partial", "full")
    plan = build_plan(config, CompareOptions(strategies=names, halving=True))
    # 4 strategies over 4 epochs: rungs 1, 2, 4; the keep counts ceil(4/3)=2, ceil(4/9)=1, each with the carried one
    assert plan.rungs[None] == [1, 2, 4]
    assert [len(b) for b in plan.batches] == [4, 3, 2]
    assert [{r.until for r in b} for b in plan.batches] == [{1}, {2}, {4}]
    assert any("worst case" in n for n in plan.notes)
    folds = build_plan(config, CompareOptions(strategies=("head-only", "full"), folds=3, race=True))
    assert [[(r.trial.strategy, r.trial.fold) for r in b] for b in folds.batches] == [
        [("head-only", f), ("full", f)] for f in range(3)]  # fmt: skip
    fold = folds.trials[Trial("full", None, 0, 1)]
    assert (fold.n_train, fold.n_val) == (48, 24)  # 72 pooled images, a third of them validating
    # one feature file for the pooled images: the first fold fills its train in both views and its val unflipped,
    # the second the rest of the 72 x 2 pairs, the third nothing
    fills = [folds.trials[Trial("head-only", None, 0, f)].phases[0].feature_images for f in range(3)]
    assert fills == [48 * 2 + 24, 72 * 2 - (48 * 2 + 24), 0]


def test_dry_run_trains_and_writes_nothing(
    image_folder: Path, tmp_path: Path, isolated_cache: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    import thawline.comparing.executor as executor

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dry run trained")

    monkeypatch.setattr(executor, "train", no_training)
    out = tmp_path / "cmp"
    argv = ["compare", "--data", str(image_folder), "--model", "test_efficientnet", "--weights", "none",
            "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--strategies", "head-only,full",
            "--out", str(out), "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    assert not (isolated_cache / "features").exists()
    assert "plan: 2 trials on test_efficientnet at 32 px" in printed
    assert "head*" in printed and "estimate: 2 trainings, ~" in printed
    assert "96 images to decode first" in printed  # nothing decoded yet: every listed image

    with pytest.raises(ThawlineError, match="--dry-run plans a fresh comparison"):
        thawline.plan_compare(tiny_config(image_folder), "head-only", out, resume=True)
    assert main([*argv[:-3], "--strategies", "head-only,nope", "--dry-run"]) == 2
    one_error_line(capsys, "unknown strategy 'nope'")


def requests(*names: str, until: int | None = None) -> list[Request]:
    return [Request(Trial(n, None, 0), until) for n in names]


def test_remaining_is_the_plan_scaled_by_the_finished_trials() -> None:
    a, b, c = requests("a", "b", "c")
    estimate = {a: 10.0, b: 20.0, c: 30.0}
    progress = Progress([[a, b, c]], estimate.__getitem__)
    progress.batch_started([a, b, c])
    assert progress.remaining() == 60.0  # nothing finished: the plan as it is
    progress.done(a, 15.0)  # 1.5x the estimate
    assert progress.remaining() == pytest.approx(1.5 * (20 + 30))
    progress.done(b, 25.0)  # (15 + 25) / (10 + 20)
    assert progress.remaining() == pytest.approx(40 / 30 * 30)
    assert progress.total == 3

    jobs = Progress([[a, b, c]], estimate.__getitem__, jobs=2)  # two at a time: half the wall time left
    jobs.batch_started([a, b, c])
    jobs.done(a, 20.0)
    assert jobs.remaining() == pytest.approx(2.0 * (20 + 30) / 2)


def test_a_stopped_strategy_leaves_the_plan() -> None:
    """Halving's plan holds its keep counts; the strategies a rung's batch leaves out are gone from the rest."""
    rung1, rung2, rung3 = requests("a", "b", "c", until=1), requests("a", "b", until=2), requests("a", until=4)
    cost = {"a": 1.0, "b": 2.0, "c": 3.0}
    progress = Progress([rung1, rung2, rung3], lambda r: cost[r.trial.strategy])
    progress.batch_started(rung1)
    assert progress.total == 6
    for r in rung1:
        progress.done(r, cost[r.trial.strategy])
    progress.batch_started(requests("c", until=2))  # a and b stopped at rung 1: c goes on, alone
    assert progress.later == [requests("c", until=4)]
    assert progress.total == 3 + 1 + 1


def test_the_line_on_a_terminal_and_in_a_log() -> None:
    a, b, c = requests("a", "b", "c")
    log, terminal = io.StringIO(), io.StringIO()
    for stream, tty in ((log, False), (terminal, True)):
        clock = iter([0.0, 65.0]).__next__  # started at 0, the trial done at 65 s
        progress = Progress([[a, b, c]], lambda r: 10.0, stream=stream, tty=tty, clock=clock)
        progress.batch_started([a, b, c])
        progress.done(a, 30.0)  # 3x: 20 s of plan left -> 60 s
    assert log.getvalue() == "progress: trial 1 of 3 done (a), 1:05 elapsed, about 1:00 left (estimated)\n"
    assert terminal.getvalue() == "███████░░░░░░░░░░░░░ trial 1 of 3 · 1:05 elapsed · ~1:00 left\n"
    assert clock_text(3723) == "1:02:03"


def test_a_compare_prints_one_progress_line_per_trial(image_folder: Path, capsys: pytest.CaptureFixture) -> None:
    from thawline.comparing.comparison import compare

    config = tiny_config(image_folder, epochs=1)
    compare(config, "head-only,full", image_folder.parent / "cmp")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("estimate: 2 trainings, ~")
    lines = [line for line in out if line.startswith("progress: ")]
    assert [line.split(" done")[0] for line in lines] == ["progress: trial 1 of 2", "progress: trial 2 of 2"]
    assert lines[-1].endswith("about 0:00 left (estimated)")
    compare(config, "head-only", image_folder.parent / "quiet", quiet=True)
    assert capsys.readouterr().out == ""
