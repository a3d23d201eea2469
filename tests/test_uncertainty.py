"""The ranking's uncertainty: bootstrap intervals, exact McNemar tests, ties with the winner, and where they show."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder, tiny_config
from test_report import parse

import thawline
from thawline.comparing.comparison import uncertainty_lines
from thawline.report.build import build_report
from thawline.report.metrics import read_predictions
from thawline.report.ranking import COLUMNS, CSV_FIELDS, fmt_interval, format_table
from thawline.report.uncertainty import (
    Correctness,
    annotate,
    bootstrap_interval,
    holm,
    mark_ties,
    mcnemar,
    mcnemar_p,
    verdict_line,
)

# ---- McNemar -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (1, 7, 2 * (1 + 8) / 256),  # 0.0703125
        (7, 1, 2 * (1 + 8) / 256),  # symmetric
        (0, 6, 2 / 64),  # 0.03125
        (2, 10, 2 * (1 + 12 + 66) / 4096),
        (0, 0, 1.0),  # no discordant pair: no evidence either way
        (0, 1, 1.0),  # 2 * 1/2, capped
        (3, 3, 1.0),  # 2 * (1+6+15+20)/64 > 1, capped
        (0, 5, 2 / 32),  # 0.0625: five images one way is not enough
    ],
)
def test_mcnemar_p_by_hand(b: int, c: int, p: float) -> None:
    assert mcnemar_p(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_counts_discordant_pairs_only() -> None:
    # 50 images both get right, 10 both get wrong, 1 only the first, 7 only the second
    first = np.r_[np.ones(50), np.zeros(10), 1, np.zeros(7)].astype(int)
    second = np.r_[np.ones(50), np.zeros(10), 0, np.ones(7)].astype(int)
    pair = mcnemar(first, second)
    assert (pair.n, pair.first_only, pair.second_only) == (68, 1, 7)
    assert pair.p == pytest.approx(0.0703125)
    assert mcnemar(second, first).p == pair.p
    with pytest.raises(ValueError, match="length"):
        mcnemar(first, second[:-1])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar(first * 2, second)


def test_mcnemar_p_of_large_counts_is_finite() -> None:
    assert 0.0 <= mcnemar_p(4000, 4200) < 0.05  # exact integers: no overflow at 2^8200
    assert mcnemar_p(5000, 5000) == 1.0


# ---- bootstrap interval --------------------------------------------------------------------------------------


def _binomial_quantile(n: int, k: int, q: float) -> float:
    """The q-quantile of Binomial(n, k/n) / n: the limit of the percentile bootstrap of k correct of n."""
    p, cdf = k / n, 0.0
    for j in range(n + 1):
        cdf += math.comb(n, j) * p**j * (1 - p) ** (n - j)
        if cdf >= q - 1e-12:
            return j / n
    return 1.0


def test_bootstrap_interval_by_hand() -> None:
    # 2 images, 1 right: resampled accuracy is 0, 1/2, 1 with probability 1/4, 1/2, 1/4 -> [0, 1]
    assert bootstrap_interval([1, 0]) == [0.0, 1.0]
    # 4 images, 3 right: P(acc <= 0) = 1/256 < 2.5% <= P(acc <= 1/4) = 13/256; P(acc <= 3/4) = 0.68 < 97.5%
    assert bootstrap_interval([1, 1, 1, 0]) == [0.25, 1.0]
    assert bootstrap_interval(np.ones(30)) == [1.0, 1.0]
    assert bootstrap_interval(np.zeros(30, dtype=bool)) == [0.0, 0.0]
    assert bootstrap_interval([]) is None
    with pytest.raises(ValueError, match="0/1"):
        bootstrap_interval([0.5, 1.0])


@pytest.mark.parametrize(("n", "k"), [(68, 58), (68, 57), (20, 15), (200, 170)])
def test_bootstrap_interval_is_the_percentile_bootstrap(n: int, k: int) -> None:
    correct = np.r_[np.ones(k), np.zeros(n - k)].astype(int)
    ci = bootstrap_interval(correct)
    assert ci == bootstrap_interval(correct[::-1]) == bootstrap_interval(correct)  # fixed seed: deterministic
    lo, hi = ci
    assert lo <= k / n <= hi
    assert all(abs(x * n - round(x * n)) < 1e-4 for x in ci)  # bounds are accuracies of n images
    # within one image of the exact bootstrap limit (2000 resamples) ...
    assert abs(lo - _binomial_quantile(n, k, 0.025)) <= 1 / n + 1e-6
    assert abs(hi - _binomial_quantile(n, k, 0.975)) <= 1 / n + 1e-6
    # ... and of a literal bootstrap that resamples image indices
    rng = np.random.default_rng(1)
    accs = correct[rng.integers(0, n, (4000, n))].mean(axis=1)
    literal = np.quantile(accs, [0.025, 0.975], method="inverted_cdf")
    assert np.abs(np.array(ci) - literal).max() <= 1 / n + 1e-6


def test_one_image_of_68_is_a_wide_interval() -> None:
    """The issue's case: 85.3% vs 83.8% on 68 images. The intervals overlap almost entirely."""
    a = bootstrap_interval(np.r_[np.ones(58), np.zeros(10)])
    b = bootstrap_interval(np.r_[np.ones(57), np.zeros(11)])
    assert a[1] - a[0] > 0.12 and b[1] - b[0] > 0.12
    assert a[0] < 57 / 68 < a[1]


# ---- ties with the winner --------------------------------------------------------------------------------------


def _rows(*names: str) -> list[dict]:
    return [{"rank": i + 1, "strategy": n, "best_val_acc": 0.9 - i / 100} for i, n in enumerate(names)]


def _pair(both: int, neither: int, first_only: int, second_only: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.r_[np.ones(both), np.zeros(neither), np.ones(first_only), np.zeros(second_only)].astype(int)
    b = np.r_[np.ones(both), np.zeros(neither), np.zeros(first_only), np.ones(second_only)].astype(int)
    return a, b


def test_holm_adjusts_the_comparisons_against_the_winner() -> None:
    """Hand-computed Holm: raw p (0.01, 0.04, 0.03) sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04, made
    monotone -> 0.03, 0.06, 0.06; in the given order 0.03, 0.06, 0.06."""
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == [] and holm([0.2]) == pytest.approx([0.2])
    # Two strategies each 7 vs 0 discordant behind the winner: raw p 2/128 = 0.0156 significant alone, but with Holm
    # over two comparisons 0.03125 and 0.03125: still significant; with 6 vs 0 (raw 0.03125) Holm makes it 0.0625.
    winner = np.r_[np.ones(50), np.ones(6)].astype(int)
    behind = np.r_[np.ones(50), np.zeros(6)].astype(int)
    rows = _rows("a", "b", "c")
    mark_ties(rows, {"a": {"test": winner}, "b": {"test": behind}, "c": {"test": behind}})
    assert [r["p_vs_winner"] for r in rows[1:]] == pytest.approx([0.0625, 0.0625])
    assert [r["tied"] for r in rows] == [None, True, True]  # each alone (p 0.03125) would be significant
    rows = _rows("a", "b")
    mark_ties(rows, {"a": {"test": winner}, "b": {"test": behind}})
    assert rows[1]["p_vs_winner"] == pytest.approx(0.03125) and rows[1]["tied"] is False


def test_tied_when_not_significant_and_not_when_significant() -> None:
    winner = np.r_[np.ones(50), np.zeros(10), np.ones(8)].astype(int)
    close = np.r_[np.ones(50), 1, np.zeros(9), 1, np.zeros(7)].astype(int)  # 7 vs 1 discordant: p = 0.0703, tied
    far = np.r_[np.ones(50), np.zeros(18)].astype(int)  # 8 vs 0: p = 2/256 = 0.0078, significant
    rows = _rows("a", "b", "c")
    verdict = mark_ties(rows, {"a": {"test": winner}, "b": {"test": close}, "c": {"test": far}})
    assert [r["tied"] for r in rows] == [None, True, False]
    # Holm over the two tested: the smaller raw p (2/256) doubled, the larger (0.0703) kept as it is the largest
    assert rows[1]["p_vs_winner"] == pytest.approx(0.0703125)
    assert rows[2]["p_vs_winner"] == pytest.approx(2 * 0.0078125)
    assert rows[0]["p_vs_winner"] is None and {r["tie_split"] for r in rows} == {"test"}
    assert (verdict.winner, verdict.runner_up, verdict.split, verdict.n) == ("a", "b", "test", 68)
    assert (verdict.winner_only, verdict.runner_up_only, verdict.tied) == (7, 1, ["b"])
    assert verdict.significant is False
    line = verdict_line(verdict)
    assert line == (
        "winner a, runner-up b: they differ by 6 images of 68 on test (7 vs 1 right only by one of them), "
        "McNemar p=0.070 (Holm): not significant (tied)"
    )
    lines = format_table(rows).splitlines()
    assert "tied" in lines[0] and "p vs #1" in lines[0]
    assert "tied" in lines[3] and "0.070" in lines[3]
    assert " no" in lines[4] and "0.016" in lines[4]


def test_significant_runner_up_and_extra_ties_in_the_line() -> None:
    winner, far = _pair(50, 10, 8, 0)
    close = np.r_[np.ones(50), 1, np.zeros(9), 0, np.ones(7)].astype(int)  # 1 vs 1 discordant with the winner
    rows = _rows("a", "far", "close")
    verdict = mark_ties(rows, {"a": {"test": winner}, "far": {"test": far}, "close": {"test": close}})
    assert verdict.significant is True and verdict.tied == ["close"]
    line = verdict_line(verdict)
    assert "differ by 8 images of 68" in line and "p=0.016 (Holm): significant" in line  # 2/256 doubled by Holm
    assert line.endswith("also tied with the winner: close")


def test_the_issue_case_one_image_is_a_tie() -> None:
    # 85.3% vs 83.8% on 68 val images: 58 vs 57 right, e.g. 4 vs 3 discordant
    winner, runner = _pair(54, 7, 4, 3)
    assert winner.sum() == 58 and runner.sum() == 57
    rows = _rows("head-only", "full")
    verdict = mark_ties(rows, {"head-only": {"val": winner}, "full": {"val": runner}})
    assert rows[1]["tied"] is True and verdict.p == 1.0 and verdict.split == "val"
    assert "differ by 1 image of 68 on val" in verdict_line(verdict)


def test_test_split_when_every_run_has_it_else_val() -> None:
    w, o = _pair(20, 2, 0, 9)
    rows = _rows("a", "b")
    v = mark_ties(rows, {"a": {"test": w, "val": o}, "b": {"test": o, "val": o}})
    assert v.split == "test" and rows[1]["tied"] is False
    v = mark_ties(rows, {"a": {"test": w, "val": o}, "b": {"val": o}})  # b has no test predictions
    assert v.split == "val" and rows[1]["tied"] is True and v.p == 1.0


def test_pairs_by_image_path_and_refuses_unpaired_runs() -> None:
    paths = tuple(f"img{i}.png" for i in range(8))
    winner = Correctness(np.array([1, 1, 1, 1, 1, 1, 0, 0]), paths)
    shuffled = Correctness(np.array([0, 0, 1, 1, 1, 1, 1, 1]), paths[::-1])  # the same answers, other order
    rows = _rows("a", "b")
    v = mark_ties(rows, {"a": {"test": winner}, "b": {"test": shuffled}})
    assert (v.winner_only, v.runner_up_only, v.p) == (0, 0, 1.0)
    # the same images through another path to the data (a relative --data in one run, absolute in the other)
    relative = tuple(f"data/test/{c}/img{i}.png" for i, c in enumerate("aabbccdd"))
    absolute = tuple("/home/me/project/" + p for p in relative)
    rows = _rows("a", "b")
    v = mark_ties(rows, {"a": {"test": Correctness(winner.correct, relative)},
                         "b": {"test": Correctness(shuffled.correct, absolute[::-1])}})  # fmt: skip
    assert (v.winner_only, v.runner_up_only, v.untested) == (0, 0, []) and rows[1]["tied"] is True
    other = Correctness(np.ones(8, dtype=int), tuple(f"other{i}.png" for i in range(8)))
    rows = _rows("a", "b", "c")
    v = mark_ties(rows, {"a": {"test": winner}, "b": {"test": other}, "c": {}})
    assert rows[1]["tied"] is None and rows[2]["tied"] is None and v.untested == ["b", "c"]
    assert "untested" in verdict_line(v)
    assert mark_ties(_rows("alone"), {"alone": {"test": winner}}) is None


# ---- run folders -----------------------------------------------------------------------------------------------


def _write_predictions(path: Path, split: str, correct: list[int]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "label", "pred", "confidence", "loss", "correct"])
        for i, ok in enumerate(correct):
            w.writerow([split, f"/data/{split}/{i}.png", "a", "a" if ok else "b", "0.9", "0.1", ok])


def test_annotate_reads_run_folders_and_names_what_is_missing(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    _write_predictions(a / "predictions.csv", "test", [1] * 18 + [0] * 2)
    _write_predictions(a / "predictions_val.csv", "val", [1] * 9 + [0])
    _write_predictions(b / "predictions.csv", "test", [1] * 17 + [0] * 3)  # an old folder: no val predictions
    rows = _rows("a", "b")
    verdict, notes = annotate(rows, {"a": a, "b": b})
    assert rows[0]["test_acc_ci"] == bootstrap_interval([1] * 18 + [0] * 2)
    assert rows[0]["val_acc_ci"] == bootstrap_interval([1] * 9 + [0])
    assert rows[1]["val_acc_ci"] is None and rows[1]["test_acc_ci"] is not None
    assert verdict.split == "test" and rows[1]["tied"] is True
    assert any("predictions_val.csv" in n and "b" in n and "—" in n for n in notes)
    text = uncertainty_lines(verdict, notes)
    assert text.splitlines()[0].startswith("winner a, runner-up b:") and "note: no val predictions" in text
    assert fmt_interval(rows[1]["val_acc_ci"]) == "—"


# ---- end to end: compare -> comparison.csv/json -> report.html ---------------------------------------------------


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uncertainty")
    data = make_image_folder(root / "data", per_class={"train": 8, "val": 6, "test": 6})
    config = tiny_config(data, batch_size=16, epochs=1, cache_dir=str(root / "cache"))
    result = thawline.compare(config, ["head-only", "full"], out=root / "cmp", quiet=True)
    build_report(result.out_dir)
    return result.out_dir


def _cell(page, strategy: str, key: str) -> str:
    row = next(r for r in page.comparison_rows if r["strategy"] == strategy)
    header = next(c.header for c in COLUMNS if c.key == key)
    return row["cells"][page.comparison_headers.index(header)]  # optional columns may be hidden


def test_compare_writes_intervals_and_ties(compared: Path) -> None:
    table = json.loads((compared / "comparison.json").read_text())
    header = (compared / "comparison.csv").read_text().splitlines()[0].split(",")
    assert header == list(CSV_FIELDS) and {"val_acc_ci", "test_acc_ci", "p_vs_winner", "tied"} <= set(header)
    for row in table:
        run = compared / row["strategy"]
        summary = json.loads((run / "summary.json").read_text())
        assert row["val_acc_ci"] == summary["val_acc_ci"] and row["test_acc_ci"] == summary["test_acc_ci"]
        test = read_predictions(run / "predictions.csv")
        val = read_predictions(run / "predictions_val.csv")
        assert (test.split, len(test), val.split, len(val)) == ("test", 18, "val", 18)
        assert summary["test_acc_ci"] == bootstrap_interval(test.correct)
        assert summary["val_acc_ci"] == bootstrap_interval(val.correct)
        lo, hi = summary["test_acc_ci"]
        assert lo <= summary["test_acc"] <= hi
        assert row["tie_split"] == "test"
    winner, runner_up = table
    assert winner["tied"] is None and winner["p_vs_winner"] is None
    pair = mcnemar(
        read_predictions(compared / winner["strategy"] / "predictions.csv").correct,
        read_predictions(compared / runner_up["strategy"] / "predictions.csv").correct,
    )
    assert runner_up["p_vs_winner"] == pytest.approx(pair.p, abs=1e-6)
    assert runner_up["tied"] is (pair.p >= 0.05)

    page = parse(compared / "report.html")
    for row in table:
        assert _cell(page, row["strategy"], "val_acc_ci") == fmt_interval(row["val_acc_ci"])
        assert _cell(page, row["strategy"], "test_acc_ci") == fmt_interval(row["test_acc_ci"])
    assert "%" in _cell(page, winner["strategy"], "test_acc_ci")
    expected = "tied" if runner_up["tied"] else "no"
    assert _cell(page, runner_up["strategy"], "tied") == expected
    if runner_up["tied"]:
        assert f"Tied with the winner {winner['strategy']}: {runner_up['strategy']}" in page.all_text
    else:
        assert f"The winner {winner['strategy']} differs significantly" in page.all_text
    assert "percentile bootstrap" in page.all_text


def test_report_of_an_old_folder_shows_dashes_and_says_why(compared: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(compared, old, ignore=shutil.ignore_patterns("*.pt", "report*"))
    table = json.loads((old / "comparison.json").read_text())
    for row in table:
        (old / row["strategy"] / "predictions_val.csv").unlink()
        path = old / row["strategy"] / "summary.json"
        summary = json.loads(path.read_text())
        for key in ("val_acc_ci", "test_acc_ci"):
            summary.pop(key)
            row.pop(key)
        path.write_text(json.dumps(summary))
        for key in ("p_vs_winner", "tied", "tie_split"):
            row.pop(key)
    (old / "comparison.json").write_text(json.dumps(table))
    page = parse(build_report(old))
    for row in table:
        assert _cell(page, row["strategy"], "val_acc_ci") == "—"
        # the test interval and the tie test only need predictions.csv, which old folders have
        ci = bootstrap_interval(read_predictions(old / row["strategy"] / "predictions.csv").correct)
        assert _cell(page, row["strategy"], "test_acc_ci") == fmt_interval(ci)
    note = next(n for n in page.text if "no val predictions (predictions_val.csv) for" in n)
    assert "head-only" in note and "full" in note and "shows —" in note
    assert "Tied with the winner" in page.all_text or "differs significantly" in page.all_text
