"""A comparison as trials -> scheduler -> executor -> answer: what each scheduler asks for, driven by a fake executor
that records the requests and returns made-up results without training; then the combinations of seeds, models,
halving and advise that the trials make possible, trained for real on the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import make_image_folder, one_error_line, tiny_config

from thawline.cli import main
from thawline.comparing.comparison import compare, ranked_runs
from thawline.comparing.schedulers import AllTrials, Halving, halving_rungs, run_schedule
from thawline.comparing.trials import Request, Trial, make_trials, trial_folder
from thawline.core.errors import ThawlineError
from thawline.report.advice import ADVICE_DIR, ADVICE_JSON
from thawline.training.run_state import RunResult

SEVEN = ["head-only", "partial", "full", "two-phase", "gradual", "layer-wise", "scratch"]
# Best val accuracy after each epoch: a base, +1 point per epoch; gradual (carried) thaws late.
BASE = {"layer-wise": 0.90, "full": 0.85, "partial": 0.80, "two-phase": 0.70, "head-only": 0.60, "scratch": 0.30}


def accuracy(trial: Trial, epoch: int) -> float:
    if trial.strategy == "gradual":
        return 0.2 if epoch <= 1 else 0.5
    return BASE[trial.strategy] + 0.01 * epoch + (0.0 if trial.seed == 0 else -0.02)


class FakeExecutor:
    """Records every request; a trial continues from the epochs it holds (never trains an epoch twice) and its
    result has a row per epoch so far, a summary once at the budget."""

    def __init__(self, budget: int, held: dict[Trial, int] | None = None, stop_at: int | None = None) -> None:
        self.budget, self.requests, self.held, self.stop_at = budget, [], dict(held or {}), stop_at
        self.trained: list[tuple[Trial, int, int]] = []  # (trial, from epoch, to epoch)

    def run(self, request: Request) -> RunResult:
        if self.stop_at is not None and len(self.requests) == self.stop_at:
            raise KeyboardInterrupt  # Ctrl-C before this request
        self.requests.append(request)
        trial, until = request.trial, request.until or self.budget
        start = self.held.get(trial, 0)
        assert until >= start, f"{trial} asked back to epoch {until} from {start}"
        self.held[trial] = until
        self.trained.append((trial, start, until))
        metrics = [{"epoch": e, "val_acc": accuracy(trial, e)} for e in range(1, until + 1)]
        summary = {"best_val_acc": max(r["val_acc"] for r in metrics)} if until == self.budget else None
        return RunResult(Path(trial.name), summary, metrics)


def test_a_trial_maps_to_one_folder() -> None:
    out = Path("OUT")
    assert trial_folder(out, Trial("partial-2/3", None, 0), 0) == out / "partial-2_3"
    assert trial_folder(out, Trial("full", "resnet50", 0), 0) == out / "resnet50" / "full"
    assert trial_folder(out, Trial("full", None, 1), 0) == out / "seeds" / "seed-1" / "full"
    assert trial_folder(out, Trial("full", "vit/b", 7), 5) == out / "seeds" / "seed-7" / "vit_b" / "full"
    assert Trial("full", "resnet50", 0).name == "resnet50 / full" and Trial("full", None, 3).name == "full"
    trials = make_trials(["head-only", "full"], None, 4, 3)
    assert [(t.strategy, t.seed) for t in trials] == [("head-only", 4), ("full", 4), ("head-only", 5), ("full", 5),
                                                     ("head-only", 6), ("full", 6)]  # fmt: skip
    folders = [trial_folder(out, t, 4) for t in make_trials(SEVEN, "m", 4, 3)]
    assert len(set(folders)) == 21  # one folder per trial


def test_all_trials_asks_for_every_trial_once_to_the_whole_budget() -> None:
    trials = make_trials(["head-only", "full", "scratch"], "m", 0, 2)
    executor = FakeExecutor(budget=4)
    scheduler = AllTrials(trials)
    results = run_schedule(scheduler, executor.run)
    assert executor.requests == [Request(t, None) for t in trials] and len(results) == 6
    assert all(start == 0 and end == 4 for _, start, end in executor.trained)
    runs = ranked_runs(scheduler, results, Path("OUT"), 0)  # the first seed's, by row name
    assert list(runs) == ["m / head-only", "m / full", "m / scratch"]


def race(trials: list[Trial], tmp_path: Path, **kw) -> tuple[Halving, FakeExecutor]:
    scheduler = Halving(trials, 9, "gradual", log=tmp_path / "halving.json", **kw)
    executor = FakeExecutor(budget=9)
    run_schedule(scheduler, executor.run)
    return scheduler, executor


def test_halving_asks_for_rungs_keeps_the_best_and_carries_the_predicted_one(tmp_path: Path) -> None:
    """7 strategies, budget 9: rungs 1, 3, 9; the best 3 (and gradual, carried from last place) continue past epoch
    1, the best one (and gradual) past epoch 3; each continues from where it stopped."""
    trials = make_trials(SEVEN, None, 0, 1)
    scheduler, executor = race(trials, tmp_path)
    asked = [(r.trial.strategy, r.until) for r in executor.requests]
    at_3 = ["layer-wise", "full", "partial", "gradual"]  # best first, then the carried one
    assert asked == [(n, 1) for n in SEVEN] + [(n, 3) for n in at_3] + [("layer-wise", 9), ("gradual", 9)]
    reached = {}
    for trial, start, end in executor.trained:
        assert start == reached.get(trial.strategy, 0)  # a continuation: from the epoch it stopped at
        reached[trial.strategy] = end
    assert reached == {"head-only": 1, "two-phase": 1, "scratch": 1, "full": 3, "partial": 3, "layer-wise": 9,
                       "gradual": 9}  # fmt: skip
    assert [t.strategy for t in scheduler.finalists] == ["layer-wise", "gradual"]
    state = json.loads((tmp_path / "halving.json").read_text())
    assert state["rungs"] == [1, 3, 9] and state["carried"] == "gradual" and state["done_rungs"] == ["1", "3", "9"]
    assert {n: (s["epoch"], s["rung"]) for n, s in state["stopped"].items()} == {
        "two-phase": (1, 1), "head-only": (1, 1), "scratch": (1, 1), "full": (3, 2), "partial": (3, 2)
    }  # fmt: skip
    assert state["scores"]["layer-wise"] == {"1": 0.91, "3": 0.93, "9": 0.99}


def test_a_resumed_race_continues_where_it_stopped(tmp_path: Path) -> None:
    """Interrupted in the second rung: the resumed race asks for no first-rung epoch again, its survivors continue
    from the epochs they hold, and it stops and finishes the same strategies as an uninterrupted race."""
    trials = make_trials(SEVEN, None, 0, 1)
    first = Halving(trials, 9, "gradual", log=tmp_path / "halving.json")
    executor = FakeExecutor(budget=9, stop_at=9)  # 7 first-rung requests, layer-wise and full to 3, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        run_schedule(first, executor.run)
    state = json.loads((tmp_path / "halving.json").read_text())
    assert state["done_rungs"] == ["1"] and state["alive"] == ["layer-wise", "full", "partial", "gradual"]
    again = Halving(trials, 9, "head-only", state=state, log=tmp_path / "halving.json")  # its carried one kept
    resumed = FakeExecutor(budget=9, held=executor.held)
    run_schedule(again, resumed.run)
    assert all(r.until in (3, 9) for r in resumed.requests)
    assert [(t.strategy, s, e) for t, s, e in resumed.trained if e == 3] == [
        ("layer-wise", 3, 3), ("full", 3, 3), ("partial", 1, 3), ("gradual", 1, 3)
    ]  # fmt: skip
    assert [t.strategy for t in again.finalists] == ["layer-wise", "gradual"]
    done = json.loads((tmp_path / "halving.json").read_text())
    (tmp_path / "straight").mkdir()
    race(trials, tmp_path / "straight")
    straight = json.loads((tmp_path / "straight" / "halving.json").read_text())
    assert done == straight


def test_halving_over_seeds_judges_each_strategy_by_its_mean(tmp_path: Path) -> None:
    """Two seeds: a strategy continues or stops on both, on the mean of its seeds' best val accuracy so far; the
    answer ranks the first seed's finalists (the other seeds' spread is read from their folders)."""
    trials = make_trials(["full", "partial", "gradual"], None, 0, 2)
    scheduler = Halving(trials, 3, "gradual", log=tmp_path / "halving.json")
    executor = FakeExecutor(budget=3)

    def shifted(request: Request) -> RunResult:  # partial: 0.99 on seed 0 but 0.5 on seed 1: mean 0.745 < full's
        result = executor.run(request)
        if request.trial.strategy == "partial":
            for row in result.metrics:
                row["val_acc"] = 0.99 if request.trial.seed == 0 else 0.5
        return result

    results = run_schedule(scheduler, shifted)
    assert halving_rungs(3, 3) == [1, 3]
    asked = [(r.trial.strategy, r.trial.seed, r.until) for r in executor.requests]
    assert asked[:6] == [(n, s, 1) for n in ("full", "partial", "gradual") for s in (0, 1)]
    assert asked[6:] == [(n, s, 3) for n in ("full", "gradual") for s in (0, 1)]
    state = json.loads((tmp_path / "halving.json").read_text())
    assert state["scores"]["full"]["1"] == pytest.approx(0.85) and state["scores"]["partial"]["1"] == 0.745
    assert state["stopped"] == {"partial": {"epoch": 1, "val_acc": 0.745, "rung": 1}}
    runs = ranked_runs(scheduler, results, tmp_path, 0)
    assert list(runs) == ["full", "gradual"] and all(r.summary is not None for r in runs.values())


def test_halving_without_an_epoch_budget_is_refused_before_anything_is_written(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ThawlineError, match="--halving needs an epoch budget"):
        compare(tiny_config(image_folder, epochs=None), ["head-only", "full"], tmp_path / "out", halving=True)
    assert not (tmp_path / "out").exists()


def test_models_halving_advise_and_seeds_combine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model grid with halving, advise and two seeds: each model runs its own advisor's pass and its own race,
    judged on the mean over both seeds; the table ranks each model's finalists."""
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 4, "test": 4})
    cfg = tiny_config(data, epochs=2)
    models = ["test_efficientnet", "test_resnet"]
    names = ["head-only", "full", "scratch"]
    out = tmp_path / "grid"
    result = compare(cfg, names, out, quiet=True, models=models, halving=True, advise=True, seeds=2)
    plan = yaml.safe_load((out / "compare.yaml").read_text())
    assert plan["models"] == models and plan["halving"] and plan["advise"] and plan["seeds"] == 2
    ranked = set()
    for model in models:
        assert (out / model / ADVICE_DIR / ADVICE_JSON).is_file()
        state = json.loads((out / model / "halving.json").read_text())
        assert state["rungs"] == [1, 2] and state["entrants"] == 3
        for name in state["stopped"]:  # stopped on both seeds: no summary anywhere
            assert not (out / model / name / "summary.json").exists()
            assert not (out / "seeds" / "seed-1" / model / name / "summary.json").exists()
        for name in state["alive"]:
            assert (out / "seeds" / "seed-1" / model / name / "summary.json").is_file()
            ranked.add(f"{model} / {name}")
    assert {r["strategy"] for r in result.rows} == ranked == set(result.runs)
    assert all(r["val_acc_seeds"][2] == 2 for r in result.rows)  # the spread over both seeds
    again = compare(cfg, names, out, quiet=True, models=models, halving=True, advise=True, seeds=2, resume=True)
    assert [r["strategy"] for r in again.rows] == [r["strategy"] for r in result.rows]
    assert [r["best_val_acc"] for r in again.rows] == [r["best_val_acc"] for r in result.rows]

    from thawline.report.build import build_report

    page = build_report(out).read_text()  # each model's race and advisor pass, headed by the model
    for model in models:
        assert f"<strong>{model}</strong>: successive halving (rungs at epochs 1, 2)" in page
        assert f"<h2>{model}</h2>" in page and (out / "report_files" / f"{model}-advise_probes.png").is_file()
        state = json.loads((out / model / "halving.json").read_text())
        for name in state["stopped"]:
            assert f"<strong>{name}</strong> after epoch 1" in page
    assert page.count('id="halving"') == 1 and all(f'<section id="advice-{m}">' in page for m in models)


def test_the_cli_takes_every_combination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's flags reach the same options: a grid with halving over two seeds runs; --seeds 0 is one line."""
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 4, "test": 4})
    flags = ["--weights", "none", "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "1",
             "--lr", "3e-3", "--min-steps", "0", "--head-steps", "0", "--quiet"]  # fmt: skip
    argv = ["compare", "--data", str(data), "--models", "test_efficientnet,test_resnet", "--halving", "--seeds", "2",
            "--strategies", "head-only,full", "--out", str(tmp_path / "cli"), *flags]  # fmt: skip
    assert main(argv) == 0
    assert "winner: test_" in capsys.readouterr().out
    assert (tmp_path / "cli" / "test_resnet" / "halving.json").is_file()
    assert main(["compare", "--data", str(data), "--seeds", "0", "--out", str(tmp_path / "bad"), *flags]) != 0
    one_error_line(capsys, "--seeds 0: must be 1 or more")
    assert not (tmp_path / "bad").exists()


class FailingExecutor(FakeExecutor):
    """A batch executor whose `failing` strategy's trials are given up on (their workers kept dying): missing from
    the batch's results, as RayExecutor and LocalPoolExecutor leave them."""

    def __init__(self, budget: int, failing: str) -> None:
        super().__init__(budget)
        self.failing = failing

    def run_batch(self, requests: list[Request]) -> dict[Request, RunResult]:
        return {r: self.run(r) for r in requests if r.trial.strategy != self.failing}


def test_a_failed_trial_is_dropped_and_the_others_go_on(tmp_path: Path) -> None:
    """AllTrials ranks the others; halving judges each rung without it (not ranked, not listed as stopped); a
    schedule without `drop` (the folds, which need every one) stops in one line."""
    plain = AllTrials(make_trials(["head-only", "full", "scratch"], None, 0, 1))
    results = run_schedule(plain, FailingExecutor(4, "full"))
    assert list(ranked_runs(plain, results, Path("OUT"), 0)) == ["head-only", "scratch"]
    halving = Halving(make_trials(SEVEN, None, 0, 1), 9, "gradual", log=tmp_path / "halving.json")
    run_schedule(halving, FailingExecutor(9, "layer-wise"))  # the best one fails at the first rung
    assert [t.strategy for t in halving.finalists] == ["full", "gradual"]  # the next best reaches the end
    assert "layer-wise" not in json.loads((tmp_path / "halving.json").read_text())["stopped"]

    class NoDrop:
        finalists = make_trials(["full"], None, 0, 1)

        def next(self, results: dict) -> list[Request]:
            return [] if results else [Request(self.finalists[0])]

    with pytest.raises(ThawlineError, match=r"^'full' failed \(its worker kept dying\)"):
        run_schedule(NoDrop(), FailingExecutor(4, "full"))
