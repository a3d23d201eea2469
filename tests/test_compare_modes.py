"""compare --halving (successive halving with exact continuation) and compare --seeds N (mean ± std)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

import thawline
from thawline.comparing import halving_floor, read_curves, simulate_halving
from thawline.comparing.comparison import compare
from thawline.comparing.schedulers import (
    halving_carried,
    halving_keep,
    halving_rungs,
    halving_stopped_line,
    halving_survivors,
)
from thawline.core.config import replace
from thawline.report import oracle_tau, read_predictions
from thawline.report.advice import ADVICE_DIR, ADVICE_JSON, SKIPPED_JSON
from thawline.report.build import build_report
from thawline.report.ranking import format_table
from thawline.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("budget", "n", "rungs"),
    [(8, 7, [1, 3, 8]), (27, 7, [3, 9, 27]), (27, 9, [3, 9, 27]), (27, 10, [1, 3, 9, 27]), (4, 7, [1, 2, 4]),
     (3, 7, [1, 2, 3]), (2, 7, [1, 2]), (5, 27, [1, 2, 3, 5]), (6, 3, [2, 6]), (3, 2, [1, 3]), (1, 7, [1]),
     (10, 4, [1, 3, 10])],
)  # fmt: skip
def test_halving_rungs(budget: int, n: int, rungs: list[int]) -> None:
    """The budget divided by 3 once per round until one strategy would remain (7 -> 3 -> 1: two rounds); on a
    short budget the rounds take successive epochs instead of merging, and those with no epoch left are dropped."""
    assert halving_rungs(budget, n) == rungs


def test_halving_keeps_the_schedules_counts_and_carries_the_predicted_best() -> None:
    assert [halving_keep(7, i) for i in (1, 2)] == [3, 1]  # 7 -> 3 -> 1, Hyperband's n / 3^i
    assert [halving_keep(9, i) for i in (1, 2)] == [3, 1] and halving_keep(10, 2) == 2 and halving_keep(2, 1) == 1
    scores = {"head-only": 0.7, "partial": 0.9, "full": 0.8, "scratch": 0.2, "two-phase": 0.8, "gradual": 0.3}
    assert halving_survivors(scores, None, 2) == ["partial", "full"]  # full before two-phase: given order
    assert halving_survivors(scores, "gradual", 2) == ["partial", "full", "gradual"]
    assert halving_survivors(scores, "partial", 2) == ["partial", "full"]  # already kept: not twice
    assert halving_survivors(scores, "layer-wise", 2) == ["partial", "full"]  # not in the race: ignored
    assert halving_survivors({"full": 0.4, "scratch": 0.5}, "full", 1) == ["scratch", "full"]
    # the carried strategy does not raise the next rung's count: of 7 with gradual carried from last place, the
    # second rung keeps the 1 best plus gradual (counting gradual among the alive four had kept 2 plus gradual)
    first = halving_survivors({**scores, "layer-wise": 0.85}, "gradual", halving_keep(7, 1))
    assert first == ["partial", "layer-wise", "full", "gradual"]
    second = {"partial": 0.91, "layer-wise": 0.92, "full": 0.90, "gradual": 0.5}
    assert halving_survivors(second, "gradual", halving_keep(7, 2)) == ["layer-wise", "gradual"]


def test_halving_carries_the_advisors_top_pick_else_the_prior_s(tmp_path: Path) -> None:
    names = ["partial", "full", "scratch"]
    assert halving_carried(names, tmp_path) == "full"  # the prior: gradual, layer-wise, head-only, full, partial, ...
    assert halving_carried(["scratch", "two-phase"], tmp_path) == "two-phase"
    (tmp_path / ADVICE_DIR).mkdir()
    ranking = [{"strategy": s} for s in ("gradual", "scratch", "partial", "full")]
    (tmp_path / ADVICE_DIR / ADVICE_JSON).write_text(json.dumps({"ranking": ranking}))
    assert halving_carried(names, tmp_path) == "scratch"  # the advisor's first among the strategies compared


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_halving_survivors_equal_uninterrupted_runs(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, epochs=4, hflip=True)
    names = ["two-phase", "full", "scratch"]
    result = compare(cfg, names, tmp_path / "halved", quiet=True, halving=True)
    state = json.loads((tmp_path / "halved" / "halving.json").read_text())
    assert state["rungs"] == [1, 4] and state["carried"] == "full"
    # at the rung: the best of three by best val accuracy continues, and full (the prior's first) whatever it scored
    at_rung = {n: state["scores"][n]["1"] for n in names}
    assert state["alive"] == halving_survivors(at_rung, "full", halving_keep(3, 1)) and "full" in state["alive"]
    assert set(state["stopped"]) == set(names) - set(state["alive"]) and state["stopped"]
    for loser in state["stopped"]:  # no summary, only the rung's epoch
        assert state["stopped"][loser]["epoch"] == 1 and state["stopped"][loser]["val_acc"] == at_rung[loser]
        assert not (tmp_path / "halved" / loser / "summary.json").exists()
        assert len(read_jsonl(tmp_path / "halved" / loser / "metrics.jsonl")) == 1
    assert sorted(r["strategy"] for r in result.rows) == sorted(state["alive"])
    # the console names the strategies the ranked table leaves out
    line = halving_stopped_line(tmp_path / "halved")
    losers = sorted(state["stopped"], key=lambda n: -at_rung[n])  # all stopped at epoch 1: the better first
    assert line == "stopped early by --halving (not ranked): " + ", ".join(
        f"{n} after epoch 1 (val {at_rung[n]:.1%})" for n in losers
    )
    assert halving_stopped_line(tmp_path / "plain") is None  # no halving.json: nothing to say
    for name in state["alive"]:  # paused at the rung and continued: the same as never stopping
        plain = thawline.train(
            replace(cfg, strategy=name), run_dir=tmp_path / "plain" / name, quiet=True
        )
        halved = tmp_path / "halved" / name
        a, b = load_checkpoint(halved / "last.pt")["model"], load_checkpoint(plain.run_dir / "last.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
        rows_h, rows_p = read_jsonl(halved / "metrics.jsonl"), read_jsonl(plain.run_dir / "metrics.jsonl")
        keys = ("train_loss", "val_loss", "val_acc", "lr")
        assert [[r[k] for k in keys] for r in rows_h] == [[r[k] for k in keys] for r in rows_p]
    html = build_report(tmp_path / "halved").read_text()
    assert "Successive halving" in html and "<strong>full</strong>,\n    predicted best, was carried" in html
    assert all(f"<strong>{loser}</strong> after epoch 1" in html for loser in state["stopped"])


def test_halving_on_a_one_epoch_budget_says_it_trains_everything(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(image_folder, epochs=1)
    result = compare(cfg, ["head-only", "full"], tmp_path / "one", halving=True)
    printed = capsys.readouterr().out
    assert "[halving] --epochs 1 leaves no earlier epoch to compare at: every strategy trains" in printed
    state = json.loads((tmp_path / "one" / "halving.json").read_text())
    assert state["rungs"] == [1] and state["stopped"] == {} and len(result.rows) == 2


ADVISE_SUITE = ROOT / "benchmarks" / "advise_suite.py"
# benchmarks/advise_suite.py run with the advisor's far_behind replaced: it leaves out the strategies named in argv[1]
PATCHED_FAR_BEHIND = """
import runpy, sys
import thawline.comparing
left_out = sys.argv.pop(1).split(",")
thawline.comparing.far_behind = lambda ranking, names: {n: "" for n in left_out if n in names}
runpy.run_path(sys.argv.pop(1), run_name="__main__")
"""


def run_advise_suite(*args: str, far_behind: list[str] | None = None) -> None:
    """benchmarks/advise_suite.py as a program (its command line, in a fresh interpreter), as its users run it."""
    patched = ["-c", PATCHED_FAR_BEHIND, ",".join(far_behind)] if far_behind is not None else []
    done = subprocess.run([sys.executable, *patched, str(ADVISE_SUITE), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_a_strategy_left_out_before_the_race_changes_nothing_else() -> None:
    """--advise leaves out a far-behind strategy before any training: with the race's entrants counted, halving
    keeps the same counts at the same rungs, so the outcome is the full race's minus the left-out one's epoch."""
    names = ["head-only", "two-phase", "layer-wise", "partial", "gradual", "full", "scratch"]
    level = {"gradual": 0.8, "partial": 0.7, "full": 0.65, "layer-wise": 0.6, "two-phase": 0.55, "head-only": 0.5}
    level["scratch"] = 0.1  # last at every rung
    curves = {n: [{"val_acc": level[n] + 0.01 * e, "seconds": 1.0} for e in range(8)] for n in names}
    race = simulate_halving(curves, 8, "gradual")
    without = {n: c for n, c in curves.items() if n != "scratch"}
    left_out = simulate_halving(curves, 8, "gradual", left_out={"scratch"})
    assert race["stopped"].pop("scratch") == 1 and left_out["stopped"] == race["stopped"]
    assert left_out["epoch_share"] == pytest.approx(race["epoch_share"] - 1 / 56, abs=1e-4)  # scratch's one epoch
    assert (left_out["winner"], left_out["rungs"]) == (race["winner"], race["rungs"]) == (race["winner"], [1, 3, 8])
    assert left_out["stopped"] == {"head-only": 1, "two-phase": 1, "layer-wise": 1, "partial": 3, "full": 3}
    # counted as a race of six instead, the first rung would keep two, not three: full would stop at epoch 1
    six = simulate_halving(without, 8, "gradual")
    assert six["stopped"] == {"head-only": 1, "two-phase": 1, "layer-wise": 1, "full": 1, "partial": 3}


def test_halving_floor_is_the_pick_and_the_carried_in_full_plus_the_others_first_epoch() -> None:
    """The floor no whole-epoch race beats while it names the pick: on a 4-epoch race where the pick (full) ranks
    third after epoch 1, the replayed race spends more than the floor, and the floor counts exactly the pick's and
    the carried one's four epochs and the others' first."""
    val = {
        "partial": [0.85, 0.86, 0.87, 0.87],
        "layer-wise": [0.84, 0.85, 0.86, 0.86],
        "full": [0.83, 0.87, 0.89, 0.88],
        "gradual": [0.70, 0.80, 0.85, 0.86],
        "scratch": [0.5, 0.6, 0.7, 0.75],
    }
    seconds = {"partial": 3.0, "layer-wise": 2.0, "full": 4.0, "gradual": 1.0, "scratch": 4.0}
    curves = {n: [{"val_acc": v, "seconds": seconds[n]} for v in vals] for n, vals in val.items()}
    floor = halving_floor(curves, "full", "gradual")
    assert floor["floor_share"] == pytest.approx((4 * 4.0 + 4 * 1.0 + 3.0 + 2.0 + 4.0) / (4 * 14.0), abs=1e-4)
    assert floor["pick_rank_by_epoch"] == [3, 1, 1, 1]
    # five entrants: the first rung keeps two (plus gradual), full stops at epoch 1, and the race spends less than
    # the floor because it misses the pick
    five = simulate_halving(curves, 4, "gradual")
    assert five["winner"] == "partial" and five["stopped"]["full"] == 1
    assert five["epoch_share"] == pytest.approx(28 / 56, abs=1e-4)
    assert five["epoch_share"] < floor["floor_share"]
    # seven (two weak, cheap ones added): three kept, full among them; the race names it at no less than the floor
    weak = {n: [{"val_acc": 0.4, "seconds": 0.5}] * 4 for n in ("head-only", "two-phase")}
    seven = simulate_halving(curves | weak, 4, "gradual")
    assert seven["winner"] == "full"
    assert seven["epoch_share"] >= halving_floor(curves | weak, "full", "gradual")["floor_share"]
    # the carried strategy being the pick itself counts once
    alone = halving_floor(curves, "full", "full")["floor_share"]
    assert alone == pytest.approx((4 * 4.0 + 3.0 + 2.0 + 1.0 + 4.0) / (4 * 14.0), abs=1e-4)


def test_halving_replayed_from_a_full_compare_names_the_real_winner(image_folder: Path, tmp_path: Path) -> None:
    """thawline.comparing.simulate_halving replays halving from a full compare's epochs; exact because survivors
    resume bit-identical, so the replay must stop the same strategies at the same rungs and name the same winner.
    benchmarks/advise_suite.py scores the suite with it: run here as a program on a suite of this compare."""
    cfg = tiny_config(image_folder, epochs=4, hflip=True)
    names = ["head-only", "two-phase", "full", "scratch"]
    halved = compare(cfg, names, tmp_path / "halved", quiet=True, halving=True)
    compare(cfg, names, tmp_path / "full", quiet=True)
    state = json.loads((tmp_path / "halved" / "halving.json").read_text())
    curves = read_curves(tmp_path / "full", names, 4)
    replay = simulate_halving(curves, 4, halving_carried(names, tmp_path / "full"))
    assert replay["rungs"] == state["rungs"] == [1, 2, 4]
    assert replay["carried"] == state["carried"] == "head-only"  # the prior's first of the four
    assert replay["stopped"] == {n: s["epoch"] for n, s in state["stopped"].items()}
    # the winner: the best final val accuracy; an exact tie goes to the faster run, and run times are not replayed
    top = max(replay["final_val"].values())
    assert set(replay["final_val"]) == set(state["alive"]) and replay["final_val"][halved.winner] == top
    assert replay["final_val"][replay["winner"]] == top
    assert 0 < replay["epoch_share"] < 1
    assert read_curves(tmp_path / "halved", names, 4) is None  # stopped runs lack epochs

    # --rescore: the recorded advise signals re-ranked against the suite's current measurements, no training
    thawline.advise(cfg, tmp_path / "advice", quiet=True)
    suite = tmp_path / "suite"
    suite.mkdir()
    tasks = []
    for i, task in enumerate(["a", "b", "c"]):  # three tasks, the same runs, measured differently
        acc = {n: {"test_acc": 0.5 + 0.1 * ((j + i) % 4)} for j, n in enumerate(names)}
        run = {"strategies": acc, "pick": names[0], "wall_s": 100.0, "out": str(tmp_path / "full")}
        tasks.append({"task": task, "strategies": names, "epochs": 4, "thawline": run})
    # and one measured by the runs themselves: its per-image test correctness (the noise ceiling) is read from the
    # run folders' predictions.csv, whatever their row order (sorted by path), and carried by --export
    correct = {}
    for n in names:
        path = tmp_path / "full" / n / "predictions.csv"
        header, *lines = path.read_text().splitlines()
        path.write_text("\n".join([header, *reversed(lines)]) + "\n")
        preds = read_predictions(path)
        correct[n] = preds.correct[np.argsort(preds.paths, kind="stable")].astype(np.uint8)
    acc = {n: {"test_acc": json.loads((tmp_path / "full" / n / "summary.json").read_text())["test_acc"]} for n in names}
    run = {"strategies": acc, "pick": names[0], "wall_s": 100.0, "out": str(tmp_path / "full")}
    tasks.append({"task": "d", "strategies": names, "epochs": 4, "counts": {"test": len(correct[names[0]])},
                  "thawline": run})  # fmt: skip
    (suite / "suite_results.json").write_text(json.dumps({"tasks": tasks}))
    advice = {"seconds": 1.0, "share_of_full": 0.01, "json": str(tmp_path / "advice" / "advise.json")}
    recorded = [{"task": t["task"], "advise": dict(advice)} for t in tasks]
    (suite / "advise_suite.json").write_text(json.dumps({"tasks": recorded}))
    patched = tmp_path / "patched"
    shutil.copytree(suite, patched)
    records = tmp_path / "records" / "suite.json"
    run_advise_suite("--suite", str(suite), "--rescore", "--export", str(records))
    out = json.loads((suite / "advise_suite.json").read_text())
    assert all(r["halving_replayed"]["winner"] == replay["winner"] for r in out["tasks"])
    by_task = {r["task"]: r for r in out["tasks"]}
    assert by_task["d"]["oracle_tau"] == round(oracle_tau(correct), 4)
    assert not any("oracle_tau" in by_task[t] for t in "abc")  # not the runs' accuracies: no ceiling, not a wrong one
    embedded = next(t for t in json.loads(records.read_text())["suite"] if t["task"] == "d")["thawline"]["strategies"]
    for n in names:  # one bit per test image, in path order
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(embedded[n]["test_correct"]), np.uint8))
        assert np.array_equal(bits[: len(correct[n])], correct[n])
    # --advise replayed: the race without what far_behind leaves out, those counted as entrants, the top pick carried
    run_advise_suite("--suite", str(patched), "--rescore", far_behind=["scratch"])
    scored = json.loads((patched / "advise_suite.json").read_text())["tasks"][0]
    advised = scored["halving_replayed_advise"]
    top = next(n for n in scored["advise"]["ranking"] if n != "scratch")
    expected = simulate_halving(curves, 4, top, left_out=["scratch"])
    assert advised["left_out"] == ["scratch"] and "scratch" not in advised["stopped"]
    assert (advised["winner"], advised["stopped"], advised["rungs"]) == (
        expected["winner"], expected["stopped"], expected["rungs"])  # fmt: skip
    # scratch's epochs count in the whole, not in the race
    total = sum(r["seconds"] for rows in curves.values() for r in rows)
    assert advised["epoch_share"] == expected["epoch_share"] < 1 - sum(r["seconds"] for r in curves["scratch"]) / total
    # the records file alone rescores to the same figures: no run folder, no advise.json read
    shutil.rmtree(tmp_path / "full")
    shutil.rmtree(tmp_path / "advice")
    run_advise_suite("--records", str(records), "--out", str(tmp_path / "again"))
    again = json.loads((tmp_path / "again" / "advise_suite.json").read_text())
    assert again["summary"] == out["summary"] and again["summary"]["oracle_tasks"] == 1
    assert [t["halving_replayed"] for t in again["tasks"]] == [t["halving_replayed"] for t in out["tasks"]]
    assert [r["measured_test"] for r in out["tasks"]] == [
        {n: a["test_acc"] for n, a in t["thawline"]["strategies"].items()} for t in tasks
    ]
    summary = out["summary"]
    # with no rules, the advisor started from the leave-one-out order is that order: the same tau
    ablation = summary["rule_ablation"]
    assert ablation["no rules"]["mean_tau"] == pytest.approx(summary["mean_tau_fixed_loo"], abs=1e-4)
    assert {"all rules", "all rules x0.25", "without depth", "without gradients"} <= set(ablation)
    assert all(-1 <= v["mean_tau"] <= 1 and v["tasks"] == len(tasks) for v in ablation.values())


def test_oracle_tau_is_the_test_sets_noise_ceiling() -> None:
    """thawline.report.oracle_tau, advise_suite's ceiling: the measured ranking as the truth, bootstrap resamples of
    the test images as remeasurements. Far-apart strategies always keep their order (1), identical ones always tie
    (0), one point apart on 400 images sometimes swap. (That the suite reads the per-image correctness from the run
    folders in path order and carries it through --export: test_halving_replayed_from_a_full_compare_...)"""
    rng = np.random.default_rng(0)
    n = 400
    far = {name: (rng.random(n) < p).astype(np.uint8) for name, p in (("a", 0.95), ("b", 0.6), ("c", 0.2))}
    assert oracle_tau(far, resamples=200) == pytest.approx(1.0)
    same = (rng.random(n) < 0.7).astype(np.uint8)
    assert oracle_tau({"a": same, "b": same.copy()}, resamples=50) == 0.0
    better = same.copy()
    better[np.flatnonzero(same == 0)[:8]], better[np.flatnonzero(same == 1)[:4]] = 1, 0  # 4 more right of 400
    assert 0.2 < oracle_tau({"a": better, "b": same}) < 0.95
    assert oracle_tau({"a": better, "b": same}) == oracle_tau({"b": same, "a": better})


def test_seeds_give_mean_and_std_per_strategy(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, epochs=1, seed=3)
    result = compare(cfg, ["head-only", "full"], tmp_path / "cmp", quiet=True, seeds=3)
    for row in result.rows:
        folder = row["strategy"]
        accs = [json.loads((tmp_path / "cmp" / folder / "summary.json").read_text())["best_val_acc"]]
        for seed in (4, 5):
            summary = json.loads((tmp_path / "cmp" / "seeds" / f"seed-{seed}" / folder / "summary.json").read_text())
            accs.append(summary["best_val_acc"])
        mean, std, n = row["val_acc_seeds"]
        assert n == 3
        assert mean == pytest.approx(np.mean(accs), abs=1e-6) and std == pytest.approx(np.std(accs, ddof=1), abs=1e-6)
        assert row["test_acc_seeds"][2] == 3
    means = [r["val_acc_seeds"][0] for r in result.rows]
    assert means == sorted(means, reverse=True)  # ranked by the mean over seeds
    assert "val mean±sd" in format_table(result.rows)
    html = build_report(tmp_path / "cmp").read_text()
    assert "val acc over seeds (mean ± std)" in html and "(3 seeds)" in html


def test_one_seed_hides_the_seed_columns(image_folder: Path, tmp_path: Path) -> None:
    result = compare(tiny_config(image_folder, epochs=1), ["head-only"], tmp_path / "one", quiet=True)
    assert "val mean±sd" not in format_table(result.rows)
    assert "over seeds" not in build_report(tmp_path / "one").read_text()


def test_advise_goes_first_in_the_compare_report(image_folder: Path, tmp_path: Path) -> None:
    compare(tiny_config(image_folder, epochs=1), ["head-only", "full"], tmp_path / "adv", quiet=True, advise=True)
    doc = json.loads((tmp_path / "adv" / "advise" / "advise.json").read_text())
    assert {r["strategy"] for r in doc["ranking"]} >= {"head-only", "full"}
    html = build_report(tmp_path / "adv").read_text()
    assert html.index('id="advice"') < html.index('id="comparison"')


def test_advise_skips_the_strategies_ranked_far_behind(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --advise, a strategy the advisor scores far below the best is not trained; skipped.json and the report
    say which and why, and a resumed comparison skips the same one. (FAR_BEHIND at 0 skips all but the two
    best-scored of three, whatever the tiny model's probes say.)"""
    rules = importlib.import_module("thawline.report.advice_rules")
    monkeypatch.setattr(rules, "FAR_BEHIND", 0.0)  # the module, not the function
    names = ["head-only", "full", "scratch"]
    cfg = tiny_config(image_folder, epochs=2)
    result = compare(cfg, names, tmp_path / "adv", quiet=True, advise=True, halving=True)
    state = json.loads((tmp_path / "adv" / "halving.json").read_text())
    assert state["entrants"] == 3 and state["rungs"] == halving_rungs(2, 3)  # the left-out one counts in the race
    doc = json.loads((tmp_path / "adv" / ADVICE_DIR / ADVICE_JSON).read_text())
    score = {r["strategy"]: r["score"] for r in doc["ranking"]}
    worst = min(names, key=lambda n: (score[n], -names.index(n)))
    skipped = json.loads((tmp_path / "adv" / ADVICE_DIR / SKIPPED_JSON).read_text())
    assert list(skipped) == [worst] and "below" in skipped[worst]
    assert sorted(result.runs) == sorted(n for n in names if n != worst)
    assert not (tmp_path / "adv" / worst).exists()
    assert worst not in (tmp_path / "adv" / "comparison.csv").read_text()
    html = build_report(tmp_path / "adv").read_text()
    assert 'id="skipped">Not trained' in html and f"<strong>{worst}</strong>, the advisor scored it" in html
    advice_rows = html[html.index('id="advice-ranking"') : html.index("</table>", html.index('id="advice-ranking"'))]
    assert advice_rows.count("not trained: more than") == 1  # the advice's ranking marks the left-out row
    again = compare(cfg, names, tmp_path / "adv", quiet=True, advise=True, halving=True, resume=True)
    assert sorted(again.runs) == sorted(result.runs) and not (tmp_path / "adv" / worst).exists()


def test_lr_auto_tests_each_phase_from_its_start_and_a_resume_keeps_it(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, strategy="two-phase", epochs=4, lr="auto")
    straight = thawline.train(cfg, run_dir=tmp_path / "straight", quiet=True)
    assert (straight.run_dir / "lr_find.json").is_file() and (straight.run_dir / "lr_find-phase2.json").is_file()
    found = json.loads((straight.run_dir / "lr_find-phase2.json").read_text())
    assert found["info"]["phase"]["train"] == "all"  # the thaw's trainable set, not the head's
    lr2 = found["suggested_lr"]
    groups = load_checkpoint(straight.run_dir / "last.pt")["optimizer"]["param_groups"]
    assert max(g["base_lr"] for g in groups) == pytest.approx(lr2)  # phase 2 runs at its own range test's LR
    # paused inside phase 2 and resumed: the phase's LR is read back, not searched again, and the run is the same
    paused = thawline.train(cfg, run_dir=tmp_path / "paused", quiet=True, stop_after_epoch=3)
    assert paused.summary is None
    stamp = (tmp_path / "paused" / "lr_find-phase2.json").stat().st_mtime_ns
    thawline.train(cfg, run_dir=tmp_path / "paused", resume=True, quiet=True)
    assert (tmp_path / "paused" / "lr_find-phase2.json").stat().st_mtime_ns == stamp
    a = load_checkpoint(tmp_path / "paused" / "last.pt")["model"]
    b = load_checkpoint(straight.run_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    keys = ("train_loss", "val_acc", "lr")
    rows_a, rows_b = read_jsonl(tmp_path / "paused" / "metrics.jsonl"), read_jsonl(straight.run_dir / "metrics.jsonl")
    assert [[r[k] for k in keys] for r in rows_a] == [[r[k] for k in keys] for r in rows_b]
