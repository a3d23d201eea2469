"""compare --folds K [--race]: folds by content, one out-of-fold prediction per pooled image and strategy, the paired
tests, the race's rule, Caruana's selection, the answer as one model (predict, evaluate, ONNX), and exact resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, one_error_line, tiny_config

import thawline
from thawline.cli import main
from thawline.comparing.comparison import CompareResult
from thawline.comparing.crossval import FoldSchedule
from thawline.comparing.schedulers import run_schedule
from thawline.core import faults
from thawline.core.errors import ThawlineError
from thawline.data.discovery import discover
from thawline.data.fingerprint import of_discovered
from thawline.data.folds import assign_folds, fold_split, pooled
from thawline.deploy.answer import AnswerEnsemble
from thawline.deploy.load import load_run
from thawline.report.crossval import (
    MIN_RACE_FOLDS,
    corrected_t_test,
    ensemble_selection,
    parsimonious_pick,
    race_drops,
    training_cost,
)
from thawline.training.run_state import RunResult

STRATEGIES = ["head-only", "full", "scratch"]


# ---- folds by content -----------------------------------------------------------------------------------------


def _keys(found) -> list[str]:
    fp = of_discovered(found)
    return [fp.splits["train"][str(Path(p).relative_to(found.root))][1] for p in found.splits["train"].paths]


def test_folds_are_stratified_deterministic_and_follow_the_content(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 10, "val": 4})
    found = pooled(discover(data))
    assert len(found.splits["train"].paths) == 3 * 14 and set(found.splits) == {"train"}  # val pooled back
    folds = assign_folds(_keys(found), found.splits["train"].labels, 5)
    assert folds == assign_folds(_keys(found), found.splits["train"].labels, 5)  # the same on every run
    labels = np.array(found.splits["train"].labels)
    for c in range(3):  # each class dealt across the folds: 14 images -> 3,3,3,3,2
        counts = np.bincount(np.array(folds)[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1 and counts.sum() == 14
    fold_of = {Path(p).name: f for p, f in zip(found.splits["train"].paths, folds, strict=True)}
    # a renamed file keeps its fold
    (data / "train" / "circle" / "circle_3.png").rename(data / "train" / "circle" / "renamed.png")
    again = pooled(discover(data))
    after = dict(zip((Path(p).name for p in again.splits["train"].paths),
                     assign_folds(_keys(again), again.splits["train"].labels, 5), strict=True))  # fmt: skip
    assert after["renamed.png"] == fold_of["circle_3.png"]


def test_byte_copies_share_a_fold_also_across_classes(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 12, "val": 3})
    for i in range(4):  # copies of circles inside circle/ and, mislabelled, in square/
        shutil.copy(data / "train" / "circle" / f"circle_{i}.png", data / "train" / "circle" / f"copy_{i}.png")
        shutil.copy(data / "train" / "circle" / f"circle_{i}.png", data / "train" / "square" / f"stray_{i}.png")
    found = pooled(discover(data))
    folds = assign_folds(_keys(found), found.splits["train"].labels, 4)
    fold_of = {str(Path(p).relative_to(data)): f for p, f in zip(found.splits["train"].paths, folds, strict=True)}
    for i in range(4):
        assert fold_of[f"train/circle/circle_{i}.png"] == fold_of[f"train/circle/copy_{i}.png"]
        assert fold_of[f"train/circle/circle_{i}.png"] == fold_of[f"train/square/stray_{i}.png"]


def test_fold_split_partitions_the_pool(tmp_path: Path) -> None:
    found = pooled(discover(make_image_folder(tmp_path / "data", {"train": 8, "val": 2, "test": 3})))
    folds = assign_folds(_keys(found), found.splits["train"].labels, 3)
    vals = []
    for i in range(3):
        cut = fold_split(found, folds, i)
        assert set(cut.splits["train"].paths).isdisjoint(cut.splits["val"].paths)
        assert sorted(cut.splits["train"].paths + cut.splits["val"].paths) == sorted(found.splits["train"].paths)
        assert cut.splits["test"].paths == found.splits["test"].paths  # test untouched
        vals += cut.splits["val"].paths
    assert sorted(vals) == sorted(found.splits["train"].paths)  # every pooled file validated exactly once


# ---- the statistics -------------------------------------------------------------------------------------------


def test_corrected_t_test_against_a_hand_computed_case() -> None:
    # d = m + z with z of mean 0 and sample variance 1 over 5 folds: t = m / sqrt((1/5 + 1/4) * 1); with
    # m = 2.776445 * sqrt(0.45), t is the t(4) quantile 0.975, so the one-sided p is 0.025.
    z = np.array([-1.0, -0.5, 0.0, 0.5, 1.0]) / math.sqrt(0.625)  # sample variance (ddof 1) of [-1..1] is 0.625
    m = 2.776445 * math.sqrt(0.45)
    other = np.full(5, 0.7)
    test = corrected_t_test(other + m + z, other, 5)
    assert test.mean_diff == pytest.approx(m) and test.t == pytest.approx(2.776445)
    assert test.p == pytest.approx(0.025, abs=1e-6)
    # the naive paired t-test would say t = m / sqrt(1/5): the correction makes it sqrt(0.45/0.2) = 1.5 times smaller
    assert corrected_t_test(other, other + m + z, 5).p == pytest.approx(0.975, abs=1e-6)
    assert corrected_t_test([0.8, 0.8], [0.7, 0.7], 5).p == 0.0 and corrected_t_test([0.7] * 3, [0.7] * 3, 3).p == 1.0


def _fold(correct: int, n: int = 40) -> np.ndarray:
    return np.r_[np.ones(correct), np.zeros(n - correct)].astype(np.int64)


def test_race_drops_only_what_its_rule_says() -> None:
    lead = [_fold(36), _fold(35)]
    far = [_fold(10), _fold(12)]  # behind on both folds by 25 images: McNemar tiny
    assert race_drops({"a": lead[:1], "b": far[:1]}, ["a", "b"]) == []  # one fold: never (MIN_RACE_FOLDS)
    assert MIN_RACE_FOLDS == 2
    drops = race_drops({"a": lead, "b": far}, ["a", "b"])
    assert [(d.strategy, d.after_fold, d.leader) for d in drops] == [("b", 2, "a")]
    assert drops[0].p_holm < 0.05 and "on each of the 2 folds" in drops[0].why
    # far behind overall but ahead on one fold: a lucky or unlucky training run, kept
    uneven = [_fold(37), _fold(5)]
    assert race_drops({"a": [_fold(36), _fold(36)], "b": uneven}, ["a", "b"]) == []
    # behind on each fold but by two images of 80: McNemar cannot tell, kept
    assert race_drops({"a": lead, "b": [_fold(35), _fold(34)]}, ["a", "b"]) == []
    # Holm: 6 vs 0 discordant twice is p 2/64 alone; over two challengers 0.0625 -> both kept, alone -> dropped
    close = [_fold(33, 40), _fold(32, 40)]
    lead2 = [_fold(36, 40), _fold(35, 40)]
    assert [d.strategy for d in race_drops({"a": lead2, "b": close}, ["a", "b"])] == ["b"]
    assert race_drops({"a": lead2, "b": close, "c": close}, ["a", "b", "c"]) == []


def test_caruana_selection_on_a_constructed_case() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])

    def member(pred: list[int], conf: float) -> np.ndarray:  # `conf` on the predicted class, the rest shared
        return np.eye(3)[pred] * (conf - (1 - conf) / 2) + (1 - conf) / 2

    a = member([0, 0, 1, 1, 0, 0], 0.7)  # 4 of 6, wrong on class 2
    b = member([1, 1, 1, 1, 2, 2], 0.6)  # 4 of 6, wrong on class 0
    c = member([0, 0, 0, 0, 2, 2], 0.5)  # 4 of 6, wrong on class 1
    d = member([1] * 6, 0.4)  # 2 of 6, never useful
    sel = ensemble_selection({"a": a, "b": b, "c": c, "d": d}, labels)
    # a, b, c tie on accuracy: a's log loss is the lowest (-ln 0.7 and -ln 0.15 ... = 0.870), so a first; a + b is
    # still 4 of 6 but with the lower log loss (0.737); adding c makes every image a 2-to-1 majority: 6 of 6
    assert [name for name, _ in sel.trajectory[:3]] == ["a", "b", "c"]
    assert [acc for _, acc in sel.trajectory[:3]] == pytest.approx([4 / 6, 4 / 6, 1.0])
    assert set(sel.weights) == {"a", "b", "c"} and sel.accuracy == pytest.approx(1.0)
    assert sum(sel.weights.values()) == pytest.approx(1.0)
    assert all(round(w * 25) == pytest.approx(w * 25) for w in sel.weights.values())  # multiples of 1/25
    mixed = sum(w * {"a": a, "b": b, "c": c}[n] for n, w in sel.weights.items())
    assert (mixed.argmax(1) == labels).mean() == pytest.approx(sel.accuracy)
    alone = ensemble_selection({"a": a, "d": d}, labels)
    assert alone.weights == {"a": 1.0}  # nothing helps: one model is the answer


# ---- the race scheduler with a fake executor ------------------------------------------------------------------


def test_the_pick_is_the_cheapest_of_the_leader_and_those_tied_with_it() -> None:
    rows = [{"strategy": "full", "tied": None}, {"strategy": "gradual", "tied": True},
            {"strategy": "head-only", "tied": False}, {"strategy": "two-phase", "tied": True}]  # fmt: skip
    costs = {"full": 900.0, "gradual": 500.0, "head-only": 1.0, "two-phase": 500.0}
    # head-only is cheapest but behind (both tests); gradual and two-phase cost the same: the higher rank
    assert parsimonious_pick(rows, costs) == "gradual"
    assert parsimonious_pick(rows, {**costs, "full": 10.0}) == "full"  # the leader when it is the cheapest
    assert parsimonious_pick(rows[:1], costs) == "full"
    summary = {"trainable_params": [1_000, 50_000], "phases": [{"epochs": 2}, {"epochs": 3}]}
    assert training_cost(summary) == 1_000 * 2 + 50_000 * 3  # trainable-parameter epochs


def test_fold_schedule_asks_fold_by_fold_and_stops_who_the_rule_drops(tmp_path: Path) -> None:
    scores = {"a": [36, 35, 37], "b": [10, 12, 11], "c": [34, 36, 35]}
    asked: list[tuple[str, int]] = []

    def run(request):
        asked.append((request.trial.strategy, request.trial.fold))
        return RunResult(tmp_path, {"s": request.trial.strategy, "f": request.trial.fold})

    def correctness(result: RunResult) -> np.ndarray:
        return _fold(scores[result.summary["s"]][result.summary["f"]])

    schedule = FoldSchedule(["a", "b", "c"], 3, 0, race=True, correctness=correctness, log=tmp_path / "race.json")
    run_schedule(schedule, run)
    assert asked == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1), ("a", 2), ("c", 2)]
    assert schedule.alive == ["a", "c"] and list(schedule.stopped) == ["b"]
    log = json.loads((tmp_path / "race.json").read_text())
    assert log["stopped"]["b"]["after_fold"] == 2 and log["fold_acc"]["b"] == [0.25, 0.3]
    asked.clear()
    plain = FoldSchedule(["a", "b", "c"], 3, 0, race=False, correctness=correctness)
    run_schedule(plain, run)
    assert len(asked) == 9 and plain.stopped == {}


# ---- a cross-validated comparison end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def crossval(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CompareResult]:
    root = tmp_path_factory.mktemp("cv")
    data = make_image_folder(root / "data", {"train": 10, "val": 4, "test": 6})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THAWLINE_CACHE_DIR", str(root / "cache"))
        result = thawline.compare(tiny_config(data), STRATEGIES, root / "cmp", folds=3, quiet=True)
    return root, result


def test_every_pooled_image_gets_one_out_of_fold_prediction_per_strategy(crossval) -> None:
    root, result = crossval
    cmp = root / "cmp"
    oof = np.load(cmp / "oof.npz")
    pool = [str(p) for p in oof["paths"]]
    assert len(pool) == len(set(pool)) == 3 * 14
    folds_csv = (cmp / "folds.csv").read_text().splitlines()
    assert folds_csv[0] == "fold,path,label" and len(folds_csv) == 1 + 42
    for i, name in enumerate(str(n) for n in oof["members"]):
        seen: list[str] = []
        for f in range(3):
            npz = np.load(cmp / name / f"fold-{f + 1}" / "probabilities.npz")
            seen += [str(p) for p in npz["val_paths"]]
            assert np.allclose(npz["val_probs"].sum(1), 1, atol=1e-5)
        assert sorted(seen) == sorted(pool)  # each exactly once
        probs = oof[f"oof_{i}"]
        assert probs.shape == (42, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    doc = json.loads((cmp / "comparison.json").read_text())
    assert doc["folds"] == 3 and [r["strategy"] for r in doc["rows"]] == [r["strategy"] for r in result.rows]
    row = doc["rows"][0]
    assert row["oof_acc"] is not None and row["oof_acc_ci"][0] <= row["oof_acc"] <= row["oof_acc_ci"][1]
    assert row["folds_acc"][2] == 3 and row["best_val_acc"] is None
    for r in doc["rows"][1:]:
        assert r["p_vs_winner"] is not None and r["p_folds"] is not None and r["tied"] in (True, False)


def test_the_folds_share_one_feature_cache(crossval) -> None:
    """Every fold's train and val are subsets of the pooled image cache: head-only's frozen-prefix features of all
    three folds (train in both flip views, val unflipped) live in one file, with every pooled image in view 0 and the
    mirror image of each image some fold trained on, computed once."""
    root, _ = crossval
    files = sorted((root / "cache" / "features").glob("*.f32"))
    assert len(files) == 1, files
    meta = json.loads(files[0].with_suffix(".json").read_text())
    n, views = meta["shape"][:2]
    assert (n, views) == (3 * 14, 2)  # a row per pooled image
    filled = np.unpackbits(np.frombuffer(bytes.fromhex(meta["filled"]), np.uint8), count=n * views).reshape(n, views)
    assert filled.all()


def test_the_answer_is_the_mean_of_its_members_and_predicts_as_one_model(crossval) -> None:
    root, result = crossval
    cmp = root / "cmp"
    answer = result.answer
    assert answer is not None and answer["kind"] in ("ensemble", "strategy")
    assert sum(answer["members"].values()) == pytest.approx(1.0)
    assert answer["forward_passes"] == 3 * len(answer["members"])
    oof = np.load(cmp / "oof.npz")
    names = [str(n) for n in oof["members"]]
    expected = sum(w * oof[f"test_{names.index(n)}"].astype(np.float64) for n, w in answer["members"].items())
    assert np.allclose(oof["test_answer"], expected, atol=1e-6)
    assert answer["test_acc"] == pytest.approx((expected.argmax(1) == oof["test_labels"]).mean(), abs=1e-6)
    model, cfg = load_run(cmp)  # the compare folder loads as its answer
    assert isinstance(model, AnswerEnsemble) and len(model.members) == answer["forward_passes"]
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        probs = torch.softmax(model(x), 1)
        members = [torch.softmax(m(x), 1) for m in model.members]
    weights = [w / 3 for n, w in answer["members"].items() for _ in range(3)]  # a member: the mean of its 3 folds
    assert torch.allclose(probs, sum(w * p for w, p in zip(weights, members, strict=True)), atol=1e-5)
    from thawline.deploy.evaluate import evaluate_run

    ev = evaluate_run(cmp, write=False)  # the answer on test, as the comparison measured it
    assert ev.accuracy == pytest.approx(answer["test_acc"], abs=1e-6)


def test_the_answer_exports_to_one_onnx_graph_matching_pytorch(crossval, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    root, _ = crossval
    moved = tmp_path / "moved"
    shutil.copytree(root / "cmp", moved)  # a moved compare folder finds its fold runs inside it
    from thawline.deploy.export import export_onnx

    result = export_onnx(moved, out=tmp_path / "answer.onnx")
    assert result.max_abs_diff < 1e-4


def test_a_race_killed_mid_fold_resumes_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 10, "val": 4, "test": 6})
    cfg = tiny_config(data)
    whole = thawline.compare(cfg, STRATEGIES, tmp_path / "whole", folds=3, race=True, quiet=True)
    real_after, count = faults.after, {"n": 0}

    def after(event: str, n: int) -> None:
        real_after(event, n)
        if event == "checkpoint":
            count["n"] += 1
            if count["n"] == 8:  # fold 2's second strategy, after its first epoch
                monkeypatch.setattr(faults, "after", real_after)
                raise KeyboardInterrupt

    monkeypatch.setattr(faults, "after", after)
    with pytest.raises(KeyboardInterrupt):
        thawline.compare(cfg, STRATEGIES, tmp_path / "cut", folds=3, race=True, quiet=True)
    assert not (tmp_path / "cut" / "comparison.json").exists()
    resumed = thawline.compare(cfg, STRATEGIES, tmp_path / "cut", folds=3, race=True, quiet=True, resume=True)
    assert resumed.answer is not None and whole.answer is not None
    strip = ("runs",)
    assert {k: v for k, v in resumed.answer.items() if k not in strip} == {
        k: v for k, v in whole.answer.items() if k not in strip
    }
    keep = ("strategy", "oof_acc", "folds_acc", "test_acc", "p_vs_winner", "p_folds", "tied")
    assert [{k: r.get(k) for k in keep} for r in resumed.rows] == [{k: r.get(k) for k in keep} for r in whole.rows]
    a, b = np.load(tmp_path / "whole" / "oof.npz"), np.load(tmp_path / "cut" / "oof.npz")
    for key in a.files:
        if key.endswith("paths"):
            continue
        assert np.array_equal(a[key], b[key]), key
    race = [json.loads((tmp_path / d / "race.json").read_text()) for d in ("whole", "cut")]
    assert race[0] == race[1]


# ---- what --folds and --race combine with ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--race"], ("--race", "--folds K")),
        (["--folds", "1"], ("--folds 1", "2 or more")),
        (["--folds", "3", "--halving", "--epochs", "2"], ("--halving", "--race instead")),
        (["--folds", "3", "--seeds", "2"], ("--seeds", "once per fold")),
        (["--folds", "3", "--models", "test_efficientnet,test_resnet"], ("--models", "not built yet")),
    ],
)
def test_folds_options_refused_in_one_line(args, fragments, tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    code = main(["compare", "--data", str(data), "--model", "test_efficientnet", "--weights", "none",
                 "--out", str(tmp_path / "cmp"), *args])  # fmt: skip
    assert code != 0
    one_error_line(capsys, *fragments)
    assert not (tmp_path / "cmp").exists() or not any((tmp_path / "cmp").iterdir())


def test_a_class_smaller_than_the_folds_is_refused(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 2, "val": 1})
    with pytest.raises(ThawlineError, match=r"--folds 5: class '\w+' has 3 image\(s\) in train and val together"):
        thawline.compare(tiny_config(data), ["head-only"], tmp_path / "cmp", folds=5, quiet=True)


def test_a_plain_comparison_keeps_its_list_format(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 6, "val": 3})
    thawline.compare(tiny_config(data, epochs=1), ["head-only"], tmp_path / "cmp", quiet=True)
    assert isinstance(json.loads((tmp_path / "cmp" / "comparison.json").read_text()), list)
    assert (tmp_path / "cmp" / "head-only" / "probabilities.npz").is_file()


def test_the_report_shows_the_answer_and_keeps_the_out_of_fold_ties(crossval) -> None:
    root, result = crossval
    from thawline.report.build import build_report

    page = build_report(root / "cmp").read_text()
    assert 'id="answer"' in page and "Caruana" in page and "out-of-fold acc" in page
    assert f"thawline predict {(root / 'cmp').resolve()}" in page
    assert "(3 folds)" in page and "Ranked by out-of-fold accuracy" in page
    assert "<th>best val acc</th>" not in page and "<th>val 95% CI</th>" not in page  # each fold has its own val
    header = (root / "cmp" / "comparison.csv").read_text().splitlines()[0]
    assert header.startswith("rank,strategy,best_val_acc")
    assert header.endswith("run_dir,oof_acc,oof_acc_ci,folds_acc,p_folds")
    doc = json.loads((root / "cmp" / "comparison.json").read_text())
    tied = [r["strategy"] for r in doc["rows"] if r["tied"]]
    for name in tied:  # the badge from comparison.json's out-of-fold tests, not from fold 1's test predictions
        assert f'data-strategy="{name}"' in page


def test_the_cli_prints_the_table_the_race_and_the_answer(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 6, "val": 2, "test": 3})
    code = main(["compare", "--data", str(data), "--model", "test_efficientnet", "--weights", "none", "--img-size",
                 "32", "--epochs", "1", "--batch-size", "8", "--min-steps", "0", "--head-steps", "0",
                 "--strategies", "head-only,scratch", "--folds", "2", "--race",
                 "--out", str(tmp_path / "cmp")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "oof acc" in out and "fold mean±sd" in out and "answer: " in out and "pick: " in out
    assert "forward passes an image" in out and str(tmp_path / "cmp" / "report.html") in out
    plan = (tmp_path / "cmp" / "compare.yaml").read_text()
    assert "folds: 2" in plan and "race: true" in plan


def test_a_resume_with_other_folds_is_refused(crossval) -> None:
    root, _ = crossval
    with pytest.raises(ThawlineError, match=r"started with --folds 3, not --folds 2"):
        thawline.compare(tiny_config(root / "data"), STRATEGIES, root / "cmp", folds=2, quiet=True, resume=True)
    with pytest.raises(ThawlineError, match=r"started with --folds 3, not no --folds"):
        thawline.compare(tiny_config(root / "data"), STRATEGIES, root / "cmp", quiet=True, resume=True)
