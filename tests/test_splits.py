"""Split folders under their usual names, and val/test held out of train when a split has no folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder, one_error_line, tiny_config
from PIL import Image

import thawline
from thawline.cli import main
from thawline.core.errors import ThawlineError
from thawline.data.check import scan
from thawline.data.discovery import discover
from thawline.data.leakage import check_leakage
from thawline.data.splits import SAMPLE, find_layout, hold_out
from thawline.deploy.evaluate import evaluate_run
from thawline.report.build import build_report


def _flat_folder(root: Path, per_class: dict[str, int], seed: int = 0, size: int = 8, smooth: bool = False) -> Path:
    """root/<class>/<i>.png: class folders with no split folders; every image different (`smooth`: 4x4 noise
    enlarged, so a resized copy keeps its look)."""
    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (4, 4, 3) if smooth else (size, size, 3), dtype=np.uint8)
            img = Image.fromarray(pixels)
            img = img.resize((size, size), Image.Resampling.BICUBIC) if smooth else img
            img.save(root / cls / f"{cls}_{i:02d}.png")
    return root


def _by_class(labels: list[int]) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=3).tolist()


def test_held_out_counts_per_class_and_a_class_of_one_stays_in_train(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "d", {"a": 11, "b": 7, "c": 1})
    found = discover(root)
    assert found.classes == ["a", "b", "c"] and found.held_out == {"val": 0.2}
    assert _by_class(found.splits["val"].labels) == [2, 1, 0]  # round(0.2 x 11), at least 1, never a class's last
    assert _by_class(found.splits["train"].labels) == [9, 6, 1]
    assert "val/ has no images of class(es) c" in found.warnings
    both = discover(root, val_split=0.2, test_split=0.3)
    assert _by_class(both.splits["test"].labels) == [3, 2, 0]
    assert _by_class(both.splits["val"].labels) == [2, 1, 0]
    assert set(both.splits["val"].paths) == set(found.splits["val"].paths)  # adding a test share keeps val
    all_paths = [p for s in both.splits.values() for p in s.paths]
    assert sorted(all_paths) == sorted(str(p) for p in root.rglob("*.png"))  # each file in exactly one split
    line = "val 20% and test 30% of each class held out, by file content (--val-split, --test-split)"
    assert both.held_out_line() == line


def test_held_out_split_follows_file_content_not_names_or_order(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "d", {"a": 10, "b": 10})
    val = {Path(p).read_bytes() for p in discover(root).splits["val"].paths}
    assert len(val) == 4
    for i, f in enumerate(sorted(root.rglob("*.png"))):  # renamed in reverse order: the same images held out
        f.rename(f.with_name(f"z{99 - i}.png"))
    assert {Path(p).read_bytes() for p in discover(root).splits["val"].paths} == val
    larger = {Path(p).read_bytes() for p in discover(root, val_split=0.5).splits["val"].paths}
    assert val < larger and len(larger) == 10


def test_byte_copies_land_in_one_split(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "d", {"a": 12, "b": 12}, size=120)  # ~43 KB each: hashed from both ends
    assert (root / "a" / "a_00.png").stat().st_size > 2 * SAMPLE
    for f in sorted((root / "a").iterdir()):  # every image of a twice: a copy can never be in another split
        shutil.copy(f, f.with_name("copy_" + f.name))
    for f in sorted((root / "b").iterdir())[:4]:  # and some of b in a as well (mislabelled copies)
        shutil.copy(f, root / "a" / ("from_b_" + f.name))
    for _ in range(2):
        found = discover(root, val_split=0.25, test_split=0.25)
        where = {}
        for split, files in found.splits.items():
            for p in files.paths:
                where.setdefault(Path(p).read_bytes(), set()).add(split)
        assert all(len(s) == 1 for s in where.values())
        assert check_leakage(found) is None  # what train checks before it starts: nothing leaked by the split
    assert _by_class(found.splits["val"].labels)[0] >= 6 and _by_class(found.splits["test"].labels)[0] >= 6


def test_hold_out_keeps_the_order_train_was_read_in() -> None:
    paths = [f"/nonexistent/{c}/{i}.png" for c in "ab" for i in range(5)]
    out = hold_out(paths, [0] * 5 + [1] * 5, {"val": 0.4})
    assert sum(len(p) for p, _ in out.values()) == 10
    for split_paths, split_labels in out.values():
        assert split_paths == sorted(split_paths) and split_labels == sorted(split_labels)


def test_split_folders_under_their_usual_names(tmp_path: Path, capfd) -> None:
    root = make_image_folder(tmp_path / "d", {"Training": 4, "valid": 2, "testing": 2}, classes=("a", "b"))
    layout = find_layout(root)
    assert {k: v.name for k, v in layout.dirs.items()} == {"train": "Training", "val": "valid", "test": "testing"}
    found = discover(root)
    assert [len(found.splits[s].paths) for s in ("train", "val", "test")] == [8, 4, 4] and found.held_out == {}
    assert found.held_out_line() is None
    with_test_split = discover(root, test_split=0.2)
    assert with_test_split.held_out == {} and any("--test-split 0.2 is not used" in w for w in with_test_split.warnings)
    assert any("--val-split 0.3 is not used" in w for w in discover(root, val_split=0.3).warnings)
    assert not discover(root).warnings
    (root / "val").mkdir()
    with pytest.raises(ThawlineError, match="'val/' and 'valid/', two val folders; merge them into one"):
        discover(root)
    assert main(["data", "check", str(root)]) == 2
    one_error_line(capfd, "two val folders")


def test_train_evaluate_and_check_a_folder_of_class_folders(tmp_path: Path, capsys) -> None:
    """A folder of class folders trains with val held out; evaluate --split val reads exactly those files, and its
    accuracy of the best weights is the run's best val accuracy; data check passes with a warning."""
    data = make_image_folder(tmp_path / "src", {"train": 10}, classes=("circle", "square", "stripes")) / "train"
    result = thawline.train(tiny_config(data, strategy="full", out=str(tmp_path / "run")))
    assert "data: " in capsys.readouterr().out
    summary = result.summary
    assert (summary["num_train"], summary["num_val"], summary["num_test"]) == (24, 6, 0)
    assert summary["held_out"] == {"val": 0.2}
    held_out = discover(data).splits["val"].paths
    ev = evaluate_run(tmp_path / "run", "val")
    assert sorted(ev.paths) == sorted(held_out)
    assert ev.accuracy == pytest.approx(summary["best_val_acc"])
    rows = json.loads((tmp_path / "run" / "evaluation_val.json").read_text())
    assert rows["accuracy"] == pytest.approx(summary["best_val_acc"])
    train_ev = evaluate_run(tmp_path / "run", "train")
    assert len(train_ev.paths) == 24 and not set(train_ev.paths) & set(held_out)
    page = build_report(tmp_path / "run").read_text()
    assert "held out of train" in page and "val 20%" in page
    check = scan(data)
    assert check.ok and check.splits == ["train"] and check.counts["train"] == dict.fromkeys(check.classes, 10)
    assert any("no val/ folder: train and compare hold out 20% of each class as val" in w for w in check.warnings)


def test_split_options_are_checked(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "d", {"a": 3, "b": 3})
    with pytest.raises(ThawlineError, match="--val-split 1.0: must be in"):
        tiny_config(root, val_split=1.0)
    with pytest.raises(ThawlineError, match="their sum must be below 1"):
        tiny_config(root, val_split=0.5, test_split=0.5)
    assert tiny_config(root, test_split=0.9).test_split == 0.9  # val left at its default: no sum to check
    with pytest.raises(ThawlineError, match="no val/ folder and --val-split is 0"):
        discover(root, val_split=0)


def test_an_unpacked_archive_mac_metadata_and_a_wrapping_folder(tmp_path: Path, capfd) -> None:
    root = _flat_folder(tmp_path / "d", {"a": 5, "b": 5})
    mac = root / "__MACOSX" / "a"
    mac.mkdir(parents=True)
    (mac / "._a_00.png").write_bytes(b"\x00\x05\x16\x07")  # what a zip made on a Mac carries beside each file
    found = discover(root)
    assert found.classes == ["a", "b"] and not found.warnings
    assert any(s.path.endswith("__MACOSX") and "macOS archive metadata" in s.reason for s in found.skipped)
    wrapped = make_image_folder(tmp_path / "unzipped" / "dataset", {"train": 2, "val": 1}, classes=("a", "b"))
    with pytest.raises(ThawlineError, match=f"has no train/ folder but '{wrapped}' has; pass --data {wrapped}"):
        discover(tmp_path / "unzipped")
    assert main(["data", "check", str(tmp_path / "unzipped")]) == 2
    one_error_line(capfd, f"pass --data {wrapped}")


def test_data_check_finds_a_near_copy_that_the_held_out_val_would_get(tmp_path: Path) -> None:
    """With no val/ folder, data check divides train as training will; a re-encoded copy of a train image that
    the split puts in val is listed as a near copy, and a byte copy never is (it stays with its original)."""
    root = _flat_folder(tmp_path / "d", {"a": 10, "b": 10}, size=32, smooth=True)
    val = discover(root).splits["val"].paths
    original = Path(val[0])  # a held-out image; its copy saved again lands in train (or val): found only in train
    Image.open(original).resize((64, 64), Image.Resampling.BILINEAR).save(original.with_name("bigger.png"))
    shutil.copy(original, original.with_name("same_bytes.png"))
    found = discover(root)
    copy_split = next(s for s, f in found.splits.items() if str(original.with_name("bigger.png")) in f.paths)
    pairs = scan(root, workers=1).near_copies
    names = {(Path(a).name, Path(b).name) for a, b, _ in pairs}
    if copy_split == "val":  # all three held out: nothing crosses a split
        assert names == set()
    else:  # the byte copy stays in val with the original, so the resized one is near both, and they never a pair
        assert names == {("bigger.png", original.name), ("bigger.png", "same_bytes.png")}


def test_compare_on_class_folders_alone_says_its_accuracies_are_on_val(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "src", {"train": 8}, classes=("circle", "square")) / "train"
    result = thawline.compare(tiny_config(data, epochs=1), ["head-only", "full"], out=tmp_path / "cmp")
    out = capsys.readouterr().out
    assert "note: the data has no test split: the accuracies are on val" in out and "--test-split 0.2" in out
    held_out = sorted(discover(data).splits["val"].paths)
    for run in result.runs.values():  # every strategy on the same held-out images
        rows = (run.run_dir / "predictions.csv").read_text().splitlines()[1:]
        assert sorted(row.split(",")[1] for row in rows) == held_out
    assert "the best epoch was chosen on these images" in build_report(tmp_path / "cmp").read_text()


def test_a_class_named_like_a_split(tmp_path: Path) -> None:
    """Class folders where one class is called "train" (the suite's photo-objects has one): still class folders.
    A split folder with loose images beside real split folders stays a split (its files are listed, not lost)."""
    root = _flat_folder(tmp_path / "d", {"bike": 5, "train": 5, "windmill": 5})
    found = discover(root)
    assert found.classes == ["bike", "train", "windmill"] and found.layout is not None and found.layout.flat
    tree = make_image_folder(tmp_path / "t", {"train": 3, "val": 2}, classes=("a", "b"))
    (tree / "test").mkdir()
    shutil.copy(tree / "val" / "a" / "a_0.png", tree / "test" / "loose.png")
    with pytest.raises(ThawlineError, match="holds no images in class folders"):
        discover(tree)
