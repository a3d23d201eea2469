"""`thawline data check`: counts, bad files, duplicates and train/val/test leakage; exit 1 only when something needs
fixing; `find_leakage` is the cheap check training runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_image_folder
from test_bad_input import make_corpus

import thawline.data.leakage as leakage
from thawline.cli import main
from thawline.core.errors import ThawlineError
from thawline.data.check import scan
from thawline.data.check_format import check_folder, format_result
from thawline.data.discovery import discover
from thawline.data.leakage import check_leakage, find_leakage


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "clean", {"train": 4, "val": 2, "test": 2}, classes=("a", "b", "c"))


def test_clean_folder_passes(clean: Path, capsys: pytest.CaptureFixture) -> None:
    r = scan(clean)
    assert r.ok and not r.warnings and not r.leakage and not r.duplicates and not r.bad_files
    assert r.splits == ["train", "val", "test"] and r.classes == ["a", "b", "c"]
    assert r.counts["train"] == {"a": 4, "b": 4, "c": 4} and r.counts["test"] == {"a": 2, "b": 2, "c": 2}
    assert r.imbalance == {"train": 1.0, "val": 1.0, "test": 1.0}
    assert r.sizes == {"width": [32, 32, 32], "height": [32, 32, 32]} and r.modes == {"RGB": 24}
    assert check_folder(clean) == 0
    out = capsys.readouterr().out
    assert "OK: nothing needs fixing" in out and "LEAKAGE" not in out
    assert main(["data", "check", str(clean), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["images"] == {"train": 12, "val": 6, "test": 6}


def test_messy_folder_reports_every_problem_and_leakage_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "messy"
    make_corpus(root, leak=True)
    r = scan(root)
    assert not r.ok
    # leakage: train/circle/circle_0.png copied into val (same class) and test (another class)
    assert len(r.leakage) == 1 and r.leaked_files == 2
    group = r.leakage[0]
    assert [f[2] for f in group.files] == ["train/circle/circle_0.png", "val/circle/copy.png", "test/stripes/copy.png"]
    assert group.splits == ["train", "val", "test"] and group.classes == ["circle", "stripes"]
    bad = {b.path: b.reason for b in r.bad_files}
    for name in ("truncated.png", "empty.png", "drawing_svg.png", "page.jpg", "bomb.png", "moved.jpg"):
        assert f"train/circle/{name}" in bad
    for name in ("truncated.jpg", "notes.jpg", "junk.png"):
        assert f"train/stripes/{name}" in bad
    assert "val/stripes/cut off.png" in bad
    assert any("not valid UTF-8" in reason for reason in bad.values())
    ignored = {b.path for b in r.ignored_files}
    expected = {"train/stripes/drawing.svg", "train/README.txt", "val/stripes/.DS_Store", "test/circle/Thumbs.db"}
    expected |= {"train/circle/.thumbnails", "train/stripes/._stripes_0.png", "train/stripes/loop"}
    assert ignored == expected
    assert "broken symbolic link" in bad["train/gone"]  # a class folder lost to a broken link is a problem
    assert set(r.empty_classes) == {("train", "empty class"), ("val", "empty class")}
    assert r.counts["train"]["circle"] == 7  # nested sub-folders count for their class
    assert {"RGBA", "P", "CMYK", "I;16", "L", "LA", "1"} <= set(r.modes)
    problems = " | ".join(r.problems)
    assert "cannot be used" in problems and "LEAKAGE" in problems and "empty class" in problems
    assert "different class labels" in problems  # a second label is a problem, not a note

    assert check_folder(root) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2].startswith("!! LEAKAGE: 2 file(s)")  # right under the title, before any table
    assert "val/copy.png" not in out and "val/circle/copy.png" in lines[4]
    assert "val/stripes/cut off.png: corrupt or truncated" in out
    assert lines[-1] == "4 problem(s) need fixing"  # the second label too
    assert main(["data", "check", str(root), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["leakage"][0]["splits"] == ["train", "val", "test"]
    assert data["counts"]["val"]["empty class"] == 0


def test_classes_imbalance_and_duplicates_within_a_split(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", {"train": 2, "val": 2}, classes=("big", "small"))
    make_image_folder(tmp_path / "more", {"train": 20}, classes=("big",), seed=1)
    for i, p in enumerate(sorted((tmp_path / "more" / "train" / "big").iterdir())):
        shutil.copy(p, root / "train" / "big" / f"more_{i}.png")
    shutil.copy(root / "train" / "small" / "small_0.png", root / "train" / "small" / "again.png")
    r = scan(root)
    assert r.counts["train"] == {"big": 22, "small": 3}
    assert r.ok, r.problems  # imbalance and duplicates within a split are warnings only
    assert r.imbalance["train"] == 7.33 and not any("imbalanced" in w for w in r.warnings)  # below 10x
    assert len(r.duplicates) == 1 and r.duplicates[0].splits == ["train"]
    (root / "train" / "small" / "again.png").unlink()
    r = scan(root)
    assert r.imbalance["train"] == 11.0
    assert any("imbalanced 11x ('big' 22 images, 'small' 2)" in w for w in r.warnings)
    assert "imbalance" in format_result(r)

    shutil.rmtree(root / "val" / "small")
    r = scan(root)
    assert r.ok and r.missing == {"val": ["small"]}
    assert any("val/ has no images of class(es) 'small'" in w for w in r.warnings)


def test_fatal_layouts_are_problems_not_crashes(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", {"train": 2, "val": 2}, classes=("a", "b"))
    (root / "val" / "c").mkdir()
    shutil.copy(root / "val" / "a" / "a_0.png", root / "val" / "c" / "c_0.png")
    r = scan(root)
    assert not r.ok and r.not_in_train == {"val": ["c"]}
    assert any("'c' have images in val/ but none in train/" in p for p in r.problems)
    shutil.rmtree(root / "val")
    shutil.rmtree(root / "train" / "b")
    r = scan(root)
    assert not any("val/" in p for p in r.problems)  # held out of train by training, said as a warning
    assert any("no val/ folder: train and compare hold out 20% of each class of train/" in w for w in r.warnings)
    assert any("1 class(es) with images; a classifier needs at least 2" in p for p in r.problems)


def test_missing_folder_and_no_train_split_are_one_line_errors(tmp_path: Path, capfd) -> None:
    with pytest.raises(ThawlineError, match="not found"):
        scan(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ThawlineError, match="is a file"):
        scan(tmp_path / "file.txt")
    only_val = make_image_folder(tmp_path / "only-val", {"validation": 1}, classes=("cats", "dogs"))
    with pytest.raises(ThawlineError, match="has validation/ but no train/ folder"):
        scan(only_val)
    assert main(["data", "check", str(tmp_path / "nope")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("thawline: error: data folder") and "Traceback" not in err


def test_find_leakage_hashes_only_files_whose_size_repeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_image_folder(tmp_path / "d", {"train": 4, "val": 2, "test": 2}, classes=("a", "b"))
    found = discover(root)
    hashed: list[str] = []
    real = leakage._sha1_file
    monkeypatch.setattr(leakage, "_sha1_file", lambda p: hashed.append(p) or real(p))
    assert find_leakage(found) == [] and check_leakage(found) is None
    all_files = sum(len(s.paths) for s in found.splits.values())
    assert len(hashed) < all_files  # random images compress to different sizes: most are never read

    shutil.copy(root / "train" / "a" / "a_1.png", root / "val" / "b" / "zz.png")
    shutil.copy(root / "train" / "a" / "a_1.png", root / "test" / "a" / "zz.png")
    found = discover(root)
    leaks = find_leakage(found)
    train_file = str(root / "train" / "a" / "a_1.png")
    assert leaks == [
        ("train", train_file, "val", str(root / "val" / "b" / "zz.png")),
        ("train", train_file, "test", str(root / "test" / "a" / "zz.png")),
    ]
    with pytest.raises(ThawlineError) as info:
        check_leakage(found)
    message = str(info.value)
    assert "\n" not in message and message.startswith("2 file(s) in val/test are byte-identical")
    assert "--allow-leakage" in message and "thawline data check" in message
    warning = check_leakage(found, allow=True)
    assert warning is not None and "allowed by --allow-leakage" in warning


def test_sizes_are_the_upright_full_sizes_although_jpegs_are_decoded_scaled(clean: Path) -> None:
    from PIL import Image
    from test_images import make_exif_rotated

    Image.new("RGB", (1600, 1200), (90, 120, 30)).save(clean / "train" / "a" / "big.jpg", quality=90)
    make_exif_rotated(clean / "train" / "b" / "turned.jpg")  # stored 40 x 20, shown 20 x 40
    r = scan(clean)
    assert r.ok and r.counts["train"] == {"a": 5, "b": 5, "c": 4}
    assert r.sizes["width"] == [20, 32, 1600] and r.sizes["height"] == [32, 32, 1200]  # min, median, max


def test_resized_and_reencoded_copies_across_splits_are_listed_as_near_copies(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:120, 0:160]

    def picture(k: int) -> Image.Image:  # distinct scenes: a blob somewhere else on another background
        blob = np.exp(-((xx - 20 - 15 * k) ** 2 + (yy - 30 - 7 * k) ** 2) / (2 * 25.0**2))
        rgb = [255 * blob, (xx * 255 / 160) * (k % 2), 255 * (1 - blob) * (k / 8)]
        return Image.fromarray(np.stack(rgb, -1).astype(np.uint8))

    root = tmp_path / "d"
    for split, cls, k in (("train", "a", 1), ("train", "a", 2), ("train", "b", 3), ("train", "b", 4), ("val", "a", 5),
                          ("val", "b", 6), ("test", "a", 7), ("test", "b", 8)):  # fmt: skip
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        picture(k).save(root / split / cls / f"p{k}.png")
    picture(7).resize((80, 60)).save(root / "train" / "a" / "copy_half.jpg", quality=70)  # test's p7, resized
    picture(6).save(root / "train" / "b" / "copy.jpg", quality=50)  # val's p6, re-encoded
    shutil.copy(root / "val" / "a" / "p5.png", root / "test" / "a" / "same_bytes.png")  # leakage, not a near copy

    r = scan(root)
    pairs = {(a, b) for a, b, _ in r.near_copies}
    assert pairs == {("train/a/copy_half.jpg", "test/a/p7.png"), ("train/b/copy.jpg", "val/b/p6.png")}
    assert all(0 < rms <= leakage.NEAR_RMS for _, _, rms in r.near_copies)
    assert r.leaked_files == 1 and not r.ok  # byte-identical copies stay a problem, listed once, as leakage
    assert any("2 image(s) in val/test look like resized or re-encoded copies" in w for w in r.warnings)
    assert "near copies across splits (2)" in format_result(r)
    assert leakage.near_copies({"train": [("x", "h1", bytes(256))], "val": [("y", "h2", bytes([4]) * 256)]}) == []
    assert leakage.near_copies({"train": [("x", "h1", bytes(256))], "val": [("y", "h2", bytes([3]) * 256)]}) == [
        ("x", "y", 3.0)
    ]  # the bound is inclusive; 4 levels apart is another picture
