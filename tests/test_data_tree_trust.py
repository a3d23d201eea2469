"""What discovery and `data check` read from a data tree: a run folder inside --data, links inside class folders and
class folders that are links, and folders beside train/ (issue 32: items 2, 3, 7).

Every image is read at most once, under the class folder it physically sits in; anything else is listed as skipped
with why, and `data check` fails exactly when a label or a split is at risk."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from thawline.cli import main
from thawline.data.check import scan
from thawline.data.check_format import check_folder
from thawline.data.discovery import discover

MARKER = ".thawline.json"  # what thawline writes into each run folder it creates (files.RUN_MARKER)


def _png(seed: int, size: int = 8) -> bytes:
    """A tiny valid PNG, different bytes for every seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


PNGS = [_png(i) for i in range(64)]  # written once; trees copy the bytes


def _found(found) -> list[tuple[str, str, str]]:
    """(split, class, real path) of every discovered image, duplicates kept."""
    return [
        (split, found.classes[label], os.path.realpath(path))
        for split, files in found.splits.items()
        for path, label in zip(files.paths, files.labels, strict=True)
    ]


def _skipped(found, root: Path) -> dict[str, tuple[str, bool]]:
    return {os.path.relpath(s.path, root): (s.reason, s.lost) for s in found.skipped}


def _mark(folder: Path, kind: str = "run") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"kind": kind, "format": 1}) + "\n", encoding="utf-8")
    (folder / "confusion.png").write_bytes(PNGS[63])  # a report image: must never become data


# ---- (2) a run folder inside --data ----------------------------------------------------------------------------


def test_run_folder_inside_class_folders_is_not_a_class(tmp_path: Path) -> None:
    flat = make_image_folder(tmp_path / "d", {"x": 6}) / "x"
    _mark(flat / "run1")
    _mark(flat / "circle" / "run0")  # --out inside a class folder: its PNGs are not that class's images either
    found = discover(flat)
    assert found.classes == ["circle", "square", "stripes"]
    assert all(Path(p).parent.name == cls for _, cls, p in _found(found))  # no report PNG among them
    skipped = _skipped(found, flat)
    assert skipped["run1"] == ("a thawline run folder, not data; ignored", False)  # listed, not lost
    assert skipped["circle/run0"] == ("a thawline run folder, not data; ignored", False)
    assert not any("run1" in w for w in found.warnings)


def test_train_twice_into_the_data_folder_keeps_the_classes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The issue's reproduction: `train --data flat --out flat/run1`, then `--out flat/run2`."""
    flat = make_image_folder(tmp_path / "d", {"x": 6}) / "x"
    for run in ("run1", "run2"):
        args = ["train", "--data", str(flat), "--model", "test_efficientnet", "--weights", "none", "--img-size",
                "32", "--epochs", "1", "--strategy", "head-only", "--out", str(flat / run)]  # fmt: skip
        assert main(args) == 0
    capsys.readouterr()
    summary = json.loads((flat / "run2" / "summary.json").read_text(encoding="utf-8"))
    assert summary["classes"] == ["circle", "square", "stripes"]  # not 'run1', made of report PNGs
    assert "a thawline run folder" in (flat / "run2" / "skipped.csv").read_text(encoding="utf-8")


# ---- (3) links inside a class folder and class folders that are links ------------------------------------------


@pytest.fixture
def animals(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", {"train": 4, "val": 2}, classes=("cat", "dog", "fish"))


def test_link_to_the_split_folder_relabels_nothing(animals: Path, capsys: pytest.CaptureFixture) -> None:
    """`ln -s .. data/train/fish/loop`: cat and dog images must not be trained as fish too."""
    (animals / "train" / "fish" / "loop").symlink_to("..", target_is_directory=True)
    found = discover(animals)
    entries = _found(found)
    assert len(entries) == len(set(entries)) == 18  # 12 train + 6 val, each once
    for _, cls, real in entries:
        assert Path(real).parent.name == cls  # the class folder it sits in
    reason, lost = _skipped(found, animals)["train/fish/loop"]
    assert "symbolic link leaves its class folder" in reason and lost
    assert any("train/fish/loop" in w for w in found.warnings)  # training says so
    result = scan(animals)  # data check sees what training sees, and fails
    assert not result.ok and result.counts["train"] == {"cat": 4, "dog": 4, "fish": 4}
    assert check_folder(animals) == 1
    assert "OK: nothing needs fixing" not in capsys.readouterr().out


def test_file_link_into_another_class_is_not_a_second_label(animals: Path) -> None:
    (animals / "train" / "fish" / "a cat.png").symlink_to(animals / "train" / "cat" / "cat_0.png")
    found = discover(animals)
    assert len(_found(found)) == 18
    assert _skipped(found, animals)["train/fish/a cat.png"][1]
    assert not scan(animals).ok


def test_link_inside_its_own_class_folder_is_read_once_and_fine(animals: Path) -> None:
    (animals / "train" / "fish" / "again").symlink_to(".", target_is_directory=True)
    (animals / "train" / "fish" / "first.png").symlink_to("fish_0.png")
    found = discover(animals)
    entries = _found(found)
    assert len(entries) == len(set(entries)) == 18
    skipped = _skipped(found, animals)
    assert not skipped["train/fish/again"][1]
    assert not skipped["train/fish/fish_0.png"][1]  # the link sorts first: the file it names is the one left out
    assert scan(animals).ok


def test_val_class_folder_linked_to_train_is_not_read_twice(animals: Path) -> None:
    """`val/cat -> ../train/cat` must not put train images into val."""
    shutil.rmtree(animals / "val" / "cat")
    (animals / "val" / "cat").symlink_to("../train/cat", target_is_directory=True)
    found = discover(animals)
    val = [real for split, _, real in _found(found) if split == "val"]
    assert len(val) == 4 and not any(f"{os.sep}train{os.sep}" in p for p in val)
    reason, lost = _skipped(found, animals)["val/cat"]
    assert "symbolic link into the data folder" in reason and lost
    assert not scan(animals).ok


def test_class_folder_linked_outside_the_data_folder_is_read(animals: Path, tmp_path: Path) -> None:
    outside = tmp_path / "more fish"
    outside.mkdir()
    (outside / "x.png").write_bytes(PNGS[0])
    (animals / "train" / "eel").symlink_to(outside, target_is_directory=True)
    found = discover(animals)
    assert found.classes == ["cat", "dog", "eel", "fish"]
    assert ("train", "eel", str((outside / "x.png").resolve())) in _found(found)
    assert scan(animals).ok


def test_identical_images_under_two_labels_fail_data_check(animals: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copy(animals / "train" / "cat" / "cat_0.png", animals / "train" / "dog" / "copy.png")
    result = scan(animals)
    assert any("different class labels" in p for p in result.problems)
    assert check_folder(animals) == 1
    assert "OK: nothing needs fixing" not in capsys.readouterr().out


# ---- (7) a folder beside train/ -------------------------------------------------------------------------------


def test_class_folder_beside_train_is_listed_and_warned(animals: Path) -> None:
    (animals / "tiger").mkdir()
    (animals / "tiger" / "t.png").write_bytes(PNGS[1])
    _mark(animals / "old run")
    found = discover(animals)
    skipped = _skipped(found, animals)
    reason, lost = skipped["tiger"]
    assert "folder beside the split folders is not read" in reason and "train/" in reason and lost
    assert any("tiger" in w for w in found.warnings)
    assert skipped["old run"] == ("a thawline run folder, not data; ignored", False)
    assert not any("old run" in w for w in found.warnings)  # quietly
    assert all(Path(p).parent.name == cls for _, cls, p in _found(found))


# ---- property: random trees ------------------------------------------------------------------------------------

NAMES = ["cat", "dog fish", "café", "猫", "a  b", "Zebra", "x-1"]
SUBS = ["sub", "deep er", "ñ", "2024"]
LINK_KINDS = ["within", "sibling", "split", "root", "above root", "outside", "file across"]


@st.composite
def trees(draw: st.DrawFn) -> dict:
    classes = draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=3, unique=True))
    splits = ["train", "val"] + (["test"] if draw(st.booleans()) else [])
    nested = {
        (s, c): draw(st.lists(st.sampled_from(SUBS), max_size=2)) for s in splits for c in classes
    }  # a chain of sub-folders (may repeat a name one level down)
    # val/test classes other than the first may be links to train's (into the data folder)
    linked = {(s, c) for s in splits[1:] for c in classes[1:] if draw(st.booleans())}
    copies = draw(st.lists(st.tuples(st.integers(0, 99), st.sampled_from(splits), st.sampled_from(classes),
                                     st.booleans()), max_size=4))  # fmt: skip
    links = draw(st.lists(st.tuples(st.sampled_from(splits), st.sampled_from(classes), st.sampled_from(LINK_KINDS),
                                    st.integers(0, 99)), max_size=3))  # fmt: skip
    outside_class = draw(st.booleans())  # train/<extra> -> a folder outside the data folder: read
    return dict(classes=classes, splits=splits, nested=nested, linked=linked, copies=copies, links=links,
                outside_class=outside_class)  # fmt: skip


def _build(base: Path, t: dict) -> tuple[Path, set[tuple[str, str, str]], bool, list[str]]:
    """Write tree `t` under base: (data root, expected (split, class, real path), whether data check must fail,
    the links that must be listed as skipped and lost)."""
    root = base / "da ta"
    content: dict[str, int] = {}  # real path -> PNG index
    expected: set[tuple[str, str, str]] = set()
    at_risk = False
    lost_links: list[str] = []
    n = 0

    def put(folder: Path, name: str, index: int, split: str | None, cls: str | None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(PNGS[index])
        real = os.path.realpath(folder / name)
        content[real] = index
        if split is not None:
            expected.add((split, cls, real))

    places: list[tuple[str, str, Path]] = []  # real class folders (split, class, deepest folder)
    for s in t["splits"]:
        for c in t["classes"]:
            if (s, c) in t["linked"]:
                (root / s).mkdir(parents=True, exist_ok=True)
                (root / s / c).symlink_to(f"../train/{c}", target_is_directory=True)
                at_risk = True  # a second way into train's images: skipped, and a problem
                lost_links.append(f"{s}/{c}")
                continue
            put(root / s / c, f"{c} {n}.png", n, s, c)
            n += 1
            folder = root / s / c
            for sub in t["nested"][(s, c)]:
                folder = folder / sub
                put(folder, f"ïmg {n}.png", n, s, c)
                n += 1
            places.append((s, c, folder))
    outside = base / "outside"
    put(outside, "o.png", n, None, None)
    n += 1
    if t["outside_class"]:
        put(base / "elsewhere", "e.png", n, "train", "zz extra")
        n += 1
        (root / "train" / "zz extra").symlink_to(base / "elsewhere", target_is_directory=True)
    for k, (i, s, c, deep) in enumerate(t["copies"]):
        real_files = sorted(p for p in content if p.startswith(os.path.realpath(root)))
        src = real_files[i % len(real_files)]
        where = [p for p in places if p[0] == s and p[1] == c] or places
        split, cls, folder = where[0]
        put(folder if deep else root / split / cls, f"copy {k}.png", content[src], split, cls)
    for k, (s, c, kind, i) in enumerate(t["links"]):
        where = [p for p in places if p[0] == s and p[1] == c] or places
        split, cls, folder = where[0]
        class_dir = root / split / cls
        link = class_dir / f"link {k}"
        others = [q for q in places if q[1] != cls] or places
        if kind == "within":
            target = class_dir if i % 2 else folder  # a loop, or a second way into a sub-folder: read once
        elif kind == "sibling":
            target = root / others[i % len(others)][0] / others[i % len(others)][1]
        elif kind == "split":
            target = root / split
        elif kind == "root":
            target = root
        elif kind == "above root":
            target = base
        elif kind == "outside":
            target = outside
        else:
            other = others[i % len(others)]
            target = next((root / other[0] / other[1]).glob("*.png"))
            link = class_dir / f"link {k}.png"
        link.symlink_to(os.path.relpath(target, class_dir), target_is_directory=target.is_dir())
        if kind != "within":
            at_risk = True
            lost_links.append(os.path.relpath(link, root))
    # identical bytes under two labels or in two splits, among what is read
    by_content: dict[int, set[tuple[str, str]]] = {}
    for split, cls, real in expected:
        by_content.setdefault(content[real], set()).add((split, cls))
    for places_of in by_content.values():
        if len({c for _, c in places_of}) > 1 or len({s for s, _ in places_of}) > 1:
            at_risk = True
    return root, expected, at_risk, lost_links


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=trees())
def test_random_trees_read_each_image_once_under_its_own_class(t: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, expected, at_risk, lost_links = _build(Path(tmp), t)
        found = discover(root)
        entries = _found(found)
        assert len(entries) == len(set(entries))  # each image at most once
        assert set(entries) == expected  # under the class folder it sits in, and nothing else
        skipped = _skipped(found, root)
        for link in lost_links:
            assert link in skipped and skipped[link][1], (link, skipped.get(link))
        result = scan(root, workers=1)  # what `thawline data check` runs
        counts = {(s, c): k for s, per_class in result.counts.items() for c, k in per_class.items() if k}
        assert counts == Counter((s, c) for s, c, _ in expected)  # data check reads what training reads
        assert result.ok == (not at_risk), result.problems
