"""report.html from run files only: table, figures, metrics that match predictions.csv, and a real browser load."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder, tiny_config

import thawline
from thawline.core.errors import ThawlineError
from thawline.report.build import build_report
from thawline.report.metrics import (
    Predictions,
    accuracy,
    calibration,
    confusion_matrix,
    per_class_metrics,
    read_predictions,
    row_normalize,
)
from thawline.report.sections import _phase_plan

STRATEGIES = ["head-only", "full"]


class _Page(HTMLParser):
    """The bits of report.html the tests look at: image sources, comparison rows, per-class rows, text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.comparison_rows: list[dict[str, str]] = []
        self.comparison_headers: list[str] = []
        self.per_class: dict[str, list[str]] = {}
        self.text: list[str] = []
        self._table: str | None = None
        self._section: str | None = None
        self._row: list[str] | None = None
        self._row_attrs: dict[str, str] = {}
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "table":
            self._table = a.get("id")
        elif tag in ("thead", "tbody", "tfoot"):
            self._section = tag
        elif tag == "tr":
            self._row, self._row_attrs = [], a
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._table == "comparison" and self._section == "thead":
                self.comparison_headers = self._row
            elif self._table == "comparison" and self._section == "tbody":
                self.comparison_rows.append(
                    {
                        "class": self._row_attrs.get("class", ""),
                        "strategy": self._row_attrs.get("data-strategy", ""),
                        "cells": self._row,
                    }
                )
            elif self._table == "per-class" and self._section == "tbody":
                self.per_class[self._row[0]] = self._row[1:]
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(report: Path) -> _Page:
    page = _Page()
    page.feed(report.read_text(encoding="utf-8"))
    page.all_text = " ".join(" ".join(page.text).split())
    return page


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real two-strategy comparison on a tiny generated folder, its report built by the API."""
    root = tmp_path_factory.mktemp("report")
    data = make_image_folder(root / "data", per_class={"train": 12, "val": 6, "test": 6})
    config = tiny_config(data, batch_size=16, lr=None, cache_dir=str(root / "cache"))
    result = thawline.compare(config, STRATEGIES, out=root / "cmp", quiet=True)
    build_report(result.out_dir)
    return result.out_dir


def _copy(src: Path, dst: Path) -> Path:
    """A copy without the checkpoints: the report must need nothing but the run files."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.pt"))
    return dst


def test_compare_report_has_table_winner_and_figures(compare_dir: Path):
    report = compare_dir / "report.html"
    assert report.is_file()
    page = parse(report)
    rows = page.comparison_rows
    assert len(rows) == len(STRATEGIES)
    table = json.loads((compare_dir / "comparison.json").read_text())
    assert [r["strategy"] for r in rows] == [r["strategy"] for r in table]
    winners = [r for r in rows if "winner" in r["class"].split()]
    assert len(winners) == 1 and "winner" in winners[0]["cells"][1]
    assert winners[0]["strategy"] == table[0]["strategy"]
    assert "baseline" in next(r for r in rows if r["strategy"] == "full")["cells"]
    assert all("%" in r["cells"][2] for r in rows)  # accuracies formatted as percent
    assert "augmentation" in page.all_text and "flips" in page.all_text  # what the train images went through
    assert page.images, "the report shows no figures"
    for src in page.images:
        assert (compare_dir / src).is_file(), src
        assert (compare_dir / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = {Path(s).name for s in page.images}
    for expected in (
        "tradeoffs.png",
        "confusion.png",
        "prediction_grid.png",
        "top_losses.png",
        "reliability.png",
        "layer_drift.png",
        "curves-head-only.png",
        "curves-full.png",
    ):
        assert expected in names
    best = compare_dir / table[0]["strategy"]
    assert (best / "prediction_grid.png").is_file()
    assert not list(compare_dir.glob(".report_files*")), "temporary folders left behind"


def test_report_rebuilds_from_run_files_only(compare_dir: Path, tmp_path: Path):
    moved = _copy(compare_dir, tmp_path / "moved")  # also a moved folder: run_dir in comparison.json is stale
    (moved / "report.html").unlink()
    assert not list(moved.rglob("*.pt"))
    # A fresh interpreter proves the report never imports torch, let alone loads a model.
    code = (
        "import sys; from thawline.report.build import build_report; "
        f"print(build_report({str(moved)!r})); assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    page = parse(moved / "report.html")
    assert len(page.comparison_rows) == len(STRATEGIES)
    assert all((moved / src).is_file() for src in page.images)


def _manual_per_class(rows: list[dict[str, str]], classes: list[str]) -> dict[str, tuple[float, float, float, int]]:
    out = {}
    for c in classes:
        tp = sum(1 for r in rows if r["label"] == c and r["pred"] == c)
        fp = sum(1 for r in rows if r["label"] != c and r["pred"] == c)
        fn = sum(1 for r in rows if r["label"] == c and r["pred"] != c)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[c] = (p, r, f, tp + fn)
    return out


def test_per_class_metrics_match_predictions_csv(compare_dir: Path):
    best = json.loads((compare_dir / "comparison.json").read_text())[0]["strategy"]
    run = compare_dir / best
    classes = json.loads((run / "summary.json").read_text())["classes"]
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    preds = read_predictions(run / "predictions.csv", classes)
    assert len(preds) == len(rows) > 0
    got = per_class_metrics(preds.labels, preds.preds, len(classes))
    manual = _manual_per_class(rows, classes)
    page = parse(compare_dir / "report.html")
    for i, c in enumerate(classes):
        p, r, f, n = manual[c]
        assert got.precision[i] == pytest.approx(p)
        assert got.recall[i] == pytest.approx(r)
        assert got.f1[i] == pytest.approx(f)
        assert got.support[i] == n
        assert page.per_class[c] == [f"{p:.1%}", f"{r:.1%}", f"{f:.1%}", str(n)]
    acc = sum(r["label"] == r["pred"] for r in rows) / len(rows)
    assert accuracy(preds.labels, preds.preds) == pytest.approx(acc)
    summary = json.loads((run / "summary.json").read_text())
    assert acc == pytest.approx(summary["test_acc"], abs=1e-6)
    cal = calibration(preds.confidence, preds.correct)
    assert 0.0 <= cal.ece <= 1.0
    assert cal.count.sum() == len(rows)
    assert f"{cal.ece:.1%}" in page.all_text

    # the most confused pairs, counted by hand from the same rows, largest first
    from collections import Counter

    mistakes = Counter((r["label"], r["pred"]) for r in rows if r["label"] != r["pred"])
    html = (compare_dir / "report.html").read_text()
    if not mistakes:
        assert 'id="most-confused"' not in html
        return
    section = html[html.index('id="most-confused"') :]
    section = section[: section.index("</table>")]
    cells = re.findall(r"<tr><td>(.*?)</td><td[^>]*>(.*?)</td><td>(\d+)</td><td>(.*?)</td></tr>", section)
    assert 0 < len(cells) <= 10 and len(cells) == min(10, len(mistakes))
    counts = [int(n) for _, _, n, _ in cells]
    assert counts == sorted(counts, reverse=True) and counts[0] == max(mistakes.values())
    for true, pred, n, share in cells:
        assert mistakes[(true, pred)] == int(n)
        assert share == f"{int(n) / sum(r['label'] == true for r in rows):.1%}"


def test_single_run_folder_gets_a_one_row_table(compare_dir: Path, tmp_path: Path):
    run = _copy(compare_dir / "full", tmp_path / "full")
    report = build_report(run)
    assert report == run / "report.html"
    page = parse(report)
    assert len(page.comparison_rows) == 1
    assert "winner" in page.comparison_rows[0]["cells"][1]
    assert all((run / src).is_file() for src in page.images)
    assert (run / "prediction_grid.png").is_file()
    assert "Run" in page.all_text


def test_missing_optional_files_are_named_not_fatal(compare_dir: Path, tmp_path: Path):
    run = _copy(compare_dir / "head-only", tmp_path / "run")
    (run / "predictions.csv").unlink()
    (run / "metrics.jsonl").unlink()
    page = parse(build_report(run))
    assert "predictions.csv is missing" in page.all_text
    assert "metrics.jsonl is missing" in page.all_text
    assert len(page.comparison_rows) == 1
    assert all((run / src).is_file() for src in page.images)


def test_moved_images_and_val_predictions(compare_dir: Path, tmp_path: Path):
    run = _copy(compare_dir / "head-only", tmp_path / "run")
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        r["split"] = "val"
        if i % 2 == 0:
            r["path"] = str(tmp_path / "gone" / f"{i}.png")
    with open(run / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    page = parse(build_report(run))
    assert "could not be opened" in page.all_text
    assert "predictions are on the val split" in page.all_text
    assert all((run / src).is_file() for src in page.images)


def test_unfinished_compare_is_rebuilt_from_sub_runs(compare_dir: Path, tmp_path: Path):
    cmp = _copy(compare_dir, tmp_path / "cmp")
    (cmp / "comparison.json").unlink()
    (cmp / "full" / "summary.json").unlink()  # still running: only metrics so far
    page = parse(build_report(cmp))
    assert len(page.comparison_rows) == 1
    assert "full: not finished" in page.all_text
    assert all((cmp / src).is_file() for src in page.images)


def test_not_a_run_folder(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ThawlineError, match="neither a run folder"):
        build_report(tmp_path)
    with pytest.raises(ThawlineError, match="not a folder"):
        build_report(tmp_path / "missing")


def test_cli_report(compare_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from thawline.cli import main

    run = _copy(compare_dir / "head-only", tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("thawline: error:") and len(err.strip().splitlines()) == 1


# ---- metrics on hand-made arrays ---------------------------------------------------------------------------


def test_confusion_and_per_class_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(labels, preds, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert row_normalize(cm)[3].tolist() == [0, 0, 0, 0]  # a class with no samples stays zero
    m = per_class_metrics(labels, preds, 4)
    assert m.precision.tolist() == pytest.approx([0.5, 2 / 3, 1.0, 0.0])
    assert m.recall.tolist() == pytest.approx([0.5, 1.0, 0.5, 0.0])
    assert m.f1[1] == pytest.approx(0.8)
    assert m.support.tolist() == [2, 2, 2, 0]
    assert m.weighted()["recall"] == pytest.approx(accuracy(labels, preds))
    # class 3: no image and never predicted, so it has no recall to average in (scikit-learn's macro: its
    # precision_recall_fscore_support(average="macro", zero_division=0) gives the same three numbers)
    macro = m.macro()
    assert macro["classes"] == 3 and macro["recall"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert macro["precision"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert macro["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # predicted but absent (a false positive) still counts: its precision is 0
    also = per_class_metrics(labels, np.array([0, 1, 1, 3, 0, 2]), 4).macro()
    assert also["classes"] == 4
    with pytest.raises(ValueError):
        confusion_matrix(labels, preds, 2)


def test_calibration_by_hand():
    perfect = calibration(np.array([0.25, 0.25, 0.25, 0.25, 1.0]), np.array([1, 0, 0, 0, 1]), n_bins=4)
    assert perfect.ece == pytest.approx(0.0)
    assert perfect.count.tolist() == [0, 4, 0, 1]  # 1.0 lands in the last bin
    over = calibration(np.array([0.9, 0.9, 0.9, 0.9]), np.array([1, 0, 0, 0]))
    assert over.ece == pytest.approx(0.65)
    assert calibration(np.array([]), np.array([])).ece == 0.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        conf = rng.uniform(0, 1, 50)
        assert 0.0 <= calibration(conf, rng.integers(0, 2, 50)).ece <= 1.0


# ---- a real browser ----------------------------------------------------------------------------------------


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium binary on PATH: the headless-browser check of report.html cannot run")
    return exe


def _chromium_run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    base = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([_chromium(), *base, *args], capture_output=True, text=True, timeout=90)


def test_report_in_headless_chromium(compare_dir: Path, tmp_path: Path):
    url = (compare_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    out = _chromium_run(["--hide-scrollbars", f"--screenshot={shot}", "--window-size=1400,3000", url], tmp_path)
    assert shot.is_file(), out.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 3000)
        colors = im.convert("RGB").resize((140, 300)).getcolors(maxcolors=1_000_000)
    assert colors is not None and len(colors) > 50, "the screenshot is (nearly) blank"

    dom = _chromium_run(["--virtual-time-budget=5000", "--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    start = dom.stdout.find('id="dom-check"')
    assert start >= 0, "dom-check element missing"
    text = dom.stdout[dom.stdout.index(">", start) + 1 : dom.stdout.index("</pre>", start)]
    check = json.loads(text.replace("&quot;", '"').replace("&amp;", "&"))
    assert check["broken"] == [], f"images that did not load: {check['broken']}"
    assert check["images"] >= 8
    assert check["comparison_rows"] == len(STRATEGIES)


def _predictions(tmp_path: Path, wrong: int) -> Predictions:
    """8 solid-blue 16 px images of two classes; the first `wrong` of class a predicted as b."""
    from PIL import Image

    paths, labels, preds = [], [], []
    for c in range(2):
        for k in range(4):
            path = tmp_path / f"{c}_{k}.png"
            Image.new("RGB", (16, 16), (0, 0, 255)).save(path)
            paths.append(str(path))
            labels.append(c)
            preds.append(1 if c == 0 and k < wrong else c)
    labels_a, preds_a = np.array(labels), np.array(preds)
    return Predictions(
        classes=["a", "b"], split="test", paths=paths, labels=labels_a, preds=preds_a,
        confidence=np.full(8, 0.9), loss=np.linspace(1, 0, 8), correct=(labels_a == preds_a).astype(np.int64),
    )  # fmt: skip


def test_prediction_grid_enlarges_small_images_and_marks_mistakes_in_red(tmp_path: Path):
    from PIL import Image

    from thawline.report.plots import BAD_COLOR
    from thawline.report.plots_predictions import TILE, plot_prediction_grid, plot_top_losses

    def count(png: Path, rgb: tuple[int, int, int]) -> int:
        return int((np.asarray(Image.open(png).convert("RGB")) == rgb).all(axis=-1).sum())

    red = tuple(int(BAD_COLOR[i : i + 2], 16) for i in (1, 3, 5))
    clean, marked = tmp_path / "clean.png", tmp_path / "marked.png"
    assert plot_prediction_grid(_predictions(tmp_path, wrong=0), clean) == (8, 0)
    preds = _predictions(tmp_path, wrong=2)
    Path(preds.paths[7]).unlink()  # an image moved away since the run: left out and counted, not fatal
    assert plot_prediction_grid(preds, marked) == (7, 1)
    assert count(clean, (0, 0, 255)) == 8 * TILE * TILE  # every 16 px tile shown at TILE px, pixels kept sharp
    assert count(marked, (0, 0, 255)) == 7 * TILE * TILE
    assert count(clean, red) == 0
    assert count(marked, red) >= 2 * 4 * TILE  # a thick red frame around each of the two mistakes
    assert plot_top_losses(preds, tmp_path / "top.png") == (7, 1)
    assert count(tmp_path / "top.png", (0, 0, 255)) == 7 * TILE * TILE


def test_long_class_names_are_shortened_in_the_middle_and_stay_on_the_page(tmp_path: Path):
    """iNaturalist-style names (the whole taxonomy, 70+ characters) would run off the figure's left edge as row
    labels and into the next tile as titles: they keep their start and distinguishing end, and nothing is cut."""
    from PIL import Image

    from thawline.report.plots_predictions import _shorten, _text_px, plot_prediction_grid, plot_top_losses

    taxonomy = "Plantae_Tracheophyta_Magnoliopsida_Asterales_Asteraceae_Taraxacum"
    names = [f"{taxonomy}_{species}" for species in ("officinale", "erythrospermum")]
    short = [_shorten(n, 120) for n in names]
    assert all(_text_px(s) <= 120 < _text_px(s + "x") for s in short)  # as much as fits, no more
    assert [s[:7] for s in short] == ["Plantae"] * 2 and short[0].endswith("inale") and short[1].endswith("rmum")
    assert _shorten("short", 120) == "short" and "…" in short[0]
    preds = _predictions(tmp_path, wrong=2)
    preds.classes = names
    for plot, png in ((plot_prediction_grid, tmp_path / "grid.png"), (plot_top_losses, tmp_path / "top.png")):
        assert plot(preds, png) == (8, 0)
        pixels = np.asarray(Image.open(png).convert("RGB"))
        assert (pixels[:, :2] == 255).all() and (pixels[:, -2:] == 255).all(), png.name  # no text cut at an edge


def test_confusion_matrix_keeps_long_class_names_short_enough_to_lay_out(tmp_path: Path):
    """Whole-taxonomy names on the axes collapsed the constrained layout (a UserWarning, labels over the matrix)."""
    import warnings

    from thawline.report.plots_predictions import CLASS_NAME_PX, _text_px, plot_confusion

    names = [f"Plantae Tracheophyta Magnoliopsida Asterales Asteraceae Taraxacum {s}" for s in ("officinale", "rubrum")]
    names.append("Fungi")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed to zero"
        plot_confusion(np.array([[8, 0, 0], [0, 8, 0], [1, 0, 7]]), names, tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 0 and _text_px(names[0]) > CLASS_NAME_PX


def test_augmentation_line_of_the_report_header() -> None:
    from thawline.report.sections import _augmentation

    assert _augmentation({"hflip": True, "min_scale": 1.0}) == "flips"
    assert _augmentation({"hflip": True, "min_scale": 0.35}) == "flips, crops ≥ 35% of the area"
    assert _augmentation({"hflip": False}) == "none"  # a run from before --min-scale: no crops
    assert _augmentation({}) is None  # nothing recorded: nothing said


def test_phase_plan_is_short_under_the_name_and_whole_on_hover() -> None:
    gradual = {"phases": [{"train": f"last:{i}", "epochs": 1 + (i == 0), "lr": 1e-4, "bn": "eval"} for i in range(9)]}
    assert _phase_plan(gradual) == "last:0 ×2 → last:1 ×1 → … → last:8 ×1 (9 phases), each @ 1e-04 (bn eval)"
    whole = _phase_plan(gradual, full=True)
    assert whole.count(" → ") == 8 and whole.count("@ 1e-04 (bn eval)") == 9
    head = {"train": "head", "epochs": 5, "lr": 1e-4, "bn": "frozen"}
    two_phase = {"phases": [head, {"train": "all", "epochs": 5, "lr": 1e-5}]}
    assert _phase_plan(two_phase) == _phase_plan(two_phase, full=True) == "head ×5 @ 1e-04 → all ×5 @ 1e-05"
    assert _phase_plan({"phases": [{"train": "head", "epochs": 10, "lr": 1e-3}]}) == "head ×10 @ 1e-03"
    assert _phase_plan(None) == ""


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every matplotlib figure thawline.report.plots* make during the test, to read its texts and tick labels."""
    import thawline.report.plots as plots
    import thawline.report.plots_compare as plots_compare
    import thawline.report.plots_predictions as plots_predictions

    made: list = []
    make = plots._figure

    def keep(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    for module in (plots, plots_compare, plots_predictions):  # each calls the `_figure` it imported
        monkeypatch.setattr(module, "_figure", keep)
    return made


@pytest.mark.parametrize("n_phases", [2, 9])
def test_curve_phase_labels_fit_above_their_spans(n_phases: int, tmp_path: Path, figures: list) -> None:
    import thawline.report.plots as plots

    phase_of = [1, 1] + list(range(2, n_phases + 1)) if n_phases > 2 else [1] * 5 + [2] * 5
    metrics = [
        {"epoch": e, "phase": p, "phase_train": f"last:{p - 1}", "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.5}
        for e, p in enumerate(phase_of, start=1)
    ]
    plots.plot_curves(metrics, tmp_path / "c.png")
    labels = [t.get_text() for t in figures[0].axes[0].texts]
    if n_phases == 2:
        assert labels == ["P1: last:0", "P2: last:1"]  # few phases: what each trains, above it
    else:
        assert labels == [f"P{i}" for i in range(1, 10)]  # gradual: the numbers alone fit one-epoch spans


def test_most_confused_pairs_largest_first_with_the_true_class_share() -> None:
    from thawline.report.metrics import confusion_matrix, most_confused

    labels = np.array([0] * 10 + [1] * 4 + [2] * 6)
    preds = np.array([0] * 6 + [2] * 3 + [1] + [1, 1, 0, 0] + [2] * 3 + [0] * 3)
    cm = confusion_matrix(labels, preds, 3)
    assert most_confused(cm) == [(0, 2, 3, 0.3), (2, 0, 3, 0.5), (1, 0, 2, 0.5), (0, 1, 1, 0.1)]  # ties by index
    assert most_confused(cm, limit=2) == [(0, 2, 3, 0.3), (2, 0, 3, 0.5)]
    assert most_confused(np.diag([5, 5])) == []  # no mistakes: no rows


def test_confusion_matrix_names_at_most_40_classes_per_axis(tmp_path: Path, figures: list) -> None:
    import thawline.report.plots_predictions as plots

    for k in (12, 200):
        classes = [f"class_{i:03d}" for i in range(k)]
        plots.plot_confusion(np.eye(k, dtype=np.int64) * 3, classes, tmp_path / f"cm{k}.png")
        names = [t.get_text() for t in figures[-1].axes[0].get_yticklabels()]
        assert names == (classes if k == 12 else classes[::5])  # 200 classes: every 5th named
