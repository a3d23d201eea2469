"""`thawline data shift` (corrupted copies of a split), `compare --shift-test` and `compare --models a,b`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CLASSES, make_image_folder, tiny_config
from PIL import Image

from thawline.cli import main
from thawline.comparing.comparison import compare
from thawline.data.shift import CORRUPTIONS, load_pixels, write_shifted
from thawline.deploy.evaluate import evaluate_run
from thawline.report.build import build_report
from thawline.report.ranking import format_table
from thawline.report.runfiles import load_folder

KINDS = tuple(CORRUPTIONS)


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "small", {"train": 2, "val": 2, "test": 4})


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shift_writes_tree_and_manifest_deterministically(small_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "shifted"
    assert main(["data", "shift", str(small_folder), "--out", str(out), "--severities", "1,3,5"]) == 0
    assert "15 sets" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    expected_sets = [f"{k}-{s}" for k in KINDS for s in (1, 3, 5)]
    assert list(manifest["sets"]) == expected_sets
    assert manifest["kinds"] == list(KINDS) and manifest["severities"] == [1, 3, 5] and manifest["split"] == "test"
    assert manifest["counts"] == {c: 4 for c in CLASSES} and manifest["skipped"] == []
    assert manifest["sets"]["noise-3"] == {"kind": "noise", "severity": 3, "param": 0.18, "count": 12}
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected_sets, "manifest.json"])
    for name in expected_sets:
        for cls in CLASSES:
            assert sorted(p.name for p in (out / name / cls).iterdir()) == [f"{cls}_{i}.png" for i in range(4)]
    original = load_pixels(small_folder / "test" / "circle" / "circle_0.png")
    shifted = load_pixels(out / "noise-5" / "circle" / "circle_0.png")
    assert shifted.shape == original.shape and not np.array_equal(shifted, original)
    assert not list(tmp_path.glob(".shifted*"))  # no temp folder left beside it

    again = tmp_path / "again"
    write_shifted(small_folder, again, severities=[1, 3, 5])
    assert _files(again) == _files(out)  # the same pixels on every run (seeded per file)
    write_shifted(small_folder, out, kinds="blur", severities="2", seed=1)  # a shifted tree is replaced whole
    assert sorted(p.name for p in out.iterdir()) == ["blur-2", "manifest.json"]


def test_severity_increases_pixel_difference_for_every_kind(small_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shifted"
    write_shifted(small_folder, out, severities="1,2,3,4,5")
    originals = sorted((small_folder / "test").rglob("*.png"))
    for kind in KINDS:
        diffs = []
        for severity in range(1, 6):
            per_image = [
                np.abs(
                    load_pixels(out / f"{kind}-{severity}" / p.relative_to(small_folder / "test")) - load_pixels(p)
                ).mean()
                for p in originals
            ]
            diffs.append(float(np.mean(per_image)))
        assert diffs[0] > 0, kind
        assert all(a < b for a, b in zip(diffs, diffs[1:], strict=False)), (kind, diffs)


def test_shift_keeps_grayscale_and_lists_unreadable_files(tmp_path: Path) -> None:
    data = tmp_path / "gray"
    for cls in ("a", "b"):
        (data / "test" / cls).mkdir(parents=True)
        for i in range(2):
            pixels = np.random.default_rng(i).integers(0, 255, (20, 24), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(data / "test" / cls / f"{i}.png")
    (data / "test" / "a" / "broken.png").write_bytes(b"")
    odd = os.path.join(os.fsencode(data / "test" / "b"), b"caf\xe9.png")  # a name that is not UTF-8: listed
    shutil.copy(data / "test" / "b" / "0.png", odd.decode("utf-8", "surrogateescape"))
    manifest = write_shifted(data, tmp_path / "out", kinds="rotate,jpeg", severities="5")
    with Image.open(tmp_path / "out" / "rotate-5" / "a" / "0.png") as img:
        assert img.mode == "L" and img.size == (24, 20)
    assert manifest["counts"] == {"a": 2, "b": 2}
    assert [s["path"] for s in manifest["skipped"]] == [str(data / "test" / "b" / "caf\ufffd.png"),
                                                       str(data / "test" / "a" / "broken.png")]  # fmt: skip
    assert not (tmp_path / "out" / "rotate-5" / "a" / "broken.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kinds", "noize"], "--kinds 'noize' is not a corruption (did you mean: noise?)"),
        (["--severities", "1,7"], "--severities '7': each severity must be a whole number from 1 to 5"),
        (["--split", "holdout"], "has no holdout/ folder; pass --split test"),
    ],
)
def test_shift_bad_input_is_one_line(small_folder: Path, tmp_path: Path, capsys, extra, message) -> None:
    assert main(["data", "shift", str(small_folder), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_shift_refuses_a_foreign_out_folder(small_folder: Path, tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["data", "shift", str(small_folder), "--out", str(foreign)]) == 2
    assert "is not a folder `thawline data shift` wrote; pass a new --out" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_compare_shift_test_fills_columns_and_report(image_folder: Path, tmp_path: Path, capsys) -> None:
    shifted = tmp_path / "shifted"
    write_shifted(image_folder, shifted, kinds="noise,contrast", severities="1,5")
    sets = ["noise-1", "noise-5", "contrast-1", "contrast-5"]
    # a missing shift folder is refused before anything trains
    assert main(["compare", "--data", str(image_folder), "--shift-test", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "refused")]) == 2  # fmt: skip
    assert "--shift-test" in capsys.readouterr().err and not (tmp_path / "refused").exists()

    cfg = tiny_config(image_folder, epochs=1)
    result = compare(cfg, ["head-only", "full"], tmp_path / "cmp", quiet=True, shift_test=shifted)
    assert yaml.safe_load((tmp_path / "cmp" / "compare.yaml").read_text())["shift_test"] == str(shifted)
    for row in result.rows:
        run_dir = Path(row["run_dir"])
        accs = json.loads((run_dir / "shift.json").read_text())
        assert list(accs) == sets and all(0.0 <= v <= 1.0 for v in accs.values())
        # the same number `thawline evaluate RUN --split DIR` gives for that set
        assert accs["noise-5"] == pytest.approx(evaluate_run(run_dir, str(shifted / "noise-5"), write=False).accuracy)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["shifted_acc"] == pytest.approx(np.mean(list(accs.values())), abs=1e-6)
        assert row["shifted_acc"] == summary["shifted_acc"]
        assert row["shift_gap"] == pytest.approx(row["test_acc"] - row["shifted_acc"], abs=1e-6)
    table = format_table(result.rows)
    assert "shifted" in table.splitlines()[0] and "gap" in table.splitlines()[0]
    header = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()[0].split(",")
    assert "shifted_acc" in header and "shift_gap" in header

    html = build_report(tmp_path / "cmp").read_text()
    assert 'src="report_files/shift.png"' in html and (tmp_path / "cmp" / "report_files" / "shift.png").is_file()
    assert "shifted acc (mean over sets)" in html and "shift gap (test − shifted)" in html
    section = html[html.index('<table id="shift-sets"') :]
    section = section[: section.index("</table>")]
    assert all(f"<th>{s}</th>" in section for s in sets)
    for row in result.rows:
        accs = json.loads((Path(row["run_dir"]) / "shift.json").read_text())
        assert f'data-strategy="{row["strategy"]}"' in section
        assert f"{accs['contrast-5']:.1%}" in section


def test_compare_models_grid_ranks_every_pair(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 4, "test": 4})
    out = tmp_path / "grid"
    flags = ["--weights", "none", "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "1",
             "--lr", "3e-3", "--min-steps", "0", "--head-steps", "0", "--quiet"]  # fmt: skip
    argv = ["compare", "--data", str(data), "--models", "test_efficientnet,test_resnet",
            "--strategies", "head-only,full", "--out", str(out), *flags]  # fmt: skip
    assert main(argv) == 0
    assert "winner: test_" in capsys.readouterr().out
    rows = json.loads((out / "comparison.json").read_text())
    names = {f"{m} / {s}" for m in ("test_efficientnet", "test_resnet") for s in ("head-only", "full")}
    assert {r["strategy"] for r in rows} == names and sorted(r["rank"] for r in rows) == [1, 2, 3, 4]
    vals = [r["best_val_acc"] for r in rows]
    assert vals == sorted(vals, reverse=True)
    for r in rows:
        model, strategy = r["strategy"].split(" / ")
        summary = json.loads((out / model / strategy / "summary.json").read_text())
        assert summary["model"] == model and summary["strategy"] == strategy
        assert Path(r["run_dir"]) == out / model / strategy
        full = next(x for x in rows if x["strategy"] == f"{model} / full")
        assert r["time_vs_full"] == pytest.approx(r["train_time_s"] / full["train_time_s"] - 1, abs=1e-4)
    assert yaml.safe_load((out / "compare.yaml").read_text())["models"] == ["test_efficientnet", "test_resnet"]

    html = (out / "report.html").read_text()  # written by the command
    body = html[html.index('<table id="comparison"') :]
    body = body[: body.index("</table>")]
    assert all(f'data-strategy="{n}"' in body for n in names)
    assert body.count("baseline") == 2  # each model's full fine-tune is its own time baseline

    moved = tmp_path / "moved"
    shutil.move(out, moved)  # the report finds the grid's runs inside the folder, not at the recorded paths
    kind, loaded, runs, notes = load_folder(moved)
    assert {r["strategy"] for r in loaded} == names and not notes
    assert all(run.finished and run.run_dir.parent.parent == moved for run in runs.values())
    (moved / "comparison.json").unlink()  # rebuilt from compare.yaml's models x strategies
    kind, rebuilt, runs, notes = load_folder(moved)
    assert [r["strategy"] for r in rebuilt] == [r["strategy"] for r in loaded] and len(runs) == 4
