"""A user's messy folder: discovery and the image cache skip every bad file with a counted reason, training runs
and lists them in skipped.csv, and fatal input ends in one `thawline: error:` line, never a traceback."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image
from test_images import BAD, GOOD

from thawline.cli import main
from thawline.core.errors import ThawlineError
from thawline.data.discovery import discover
from thawline.data.image_cache import build_image_cache
from thawline.data.leakage import find_leakage

CLASSES = ("circle", "stripes", "square café")  # a class name with a space and a non-ASCII letter
NOT_UTF8 = b"latin1 \xe9t\xe9.png"  # a file name from an old zip: not valid UTF-8


def make_corpus(root: Path, leak: bool = False) -> tuple[dict[str, str], set[str]]:
    """A small ImageFolder tree holding every kind of bad input that training must survive.

    Returns ({relative path of each bad file or folder: fragment of its reason}, {relative paths that must train}).
    """
    make_image_folder(root, {"train": 6, "val": 3, "test": 3}, classes=CLASSES)
    bad: dict[str, str] = {}
    good: set[str] = set()
    for i, (name, make, fragment) in enumerate(BAD.values()):
        folder = root / "train" / CLASSES[i % 2]
        make(folder / name)
        bad[f"train/{CLASSES[i % 2]}/{name}"] = fragment
    for name, make in GOOD.values():  # odd but usable: RGBA, palette, CMYK, 16-bit, L, LA, 1-bit, EXIF, ...
        make(root / "train" / "square café" / name)
        good.add(f"train/square café/{name}")
    # a truncated file and a text file in val/test too
    whole = (root / "val" / "stripes" / "stripes_0.png").read_bytes()  # not a copy of train's truncated.png:
    (root / "val" / "stripes" / "cut off.png").write_bytes(whole[: len(whole) // 2])  # that would be leakage
    bad["val/stripes/cut off.png"] = "truncated"
    (root / "test" / "circle" / "Thumbs.db").write_bytes(b"\0" * 32)
    bad["test/circle/Thumbs.db"] = "not an image file extension (.db)"
    # nested folders inside a class folder belong to that class
    nested = root / "train" / "circle" / "batch 2" / "ünïcödé"
    nested.mkdir(parents=True)
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(nested / "naïve image 1.png")
    good.add("train/circle/batch 2/ünïcödé/naïve image 1.png")
    # an empty class folder (in train, and the same class empty in val too), files outside class folders
    (root / "train" / "empty class").mkdir()
    (root / "val" / "empty class").mkdir()
    bad["train/empty class"] = "class folder with no images"
    bad["val/empty class"] = "class folder with no images"
    (root / "train" / "README.txt").write_text("my data set")
    bad["train/README.txt"] = "not in a class folder"
    (root / "val" / "stripes" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    bad["val/stripes/.DS_Store"] = "hidden file"
    # macOS's metadata twin of an image (AppleDouble, left by a copy from a Mac): not an image, whatever its name
    (root / "train" / "stripes" / "._stripes_0.png").write_bytes(b"\0\5\26\7" + b"\0" * 60)
    bad["train/stripes/._stripes_0.png"] = "macOS metadata file"
    # a hidden folder inside a class folder: ignored, but said
    hidden = root / "train" / "circle" / ".thumbnails"
    hidden.mkdir()
    shutil.copy(root / "train" / "circle" / "circle_0.png", hidden / "small.png")
    bad["train/circle/.thumbnails"] = "hidden folder"
    # a linked folder inside a class folder that leads out of it is not read (its images would take this class's
    # label), and said; a link back to a folder read is said once
    elsewhere = root.parent / f"{root.name} linked"
    elsewhere.mkdir()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(elsewhere / "from a link.png")
    (root / "train" / "stripes" / "linked").symlink_to(elsewhere, target_is_directory=True)
    bad["train/stripes/linked"] = "leaves its class folder"
    (root / "train" / "stripes" / "loop").symlink_to(root / "train" / "stripes", target_is_directory=True)
    bad["train/stripes/loop"] = "folder already read"
    # a class folder that is a broken link: the class cannot be found, and that is said
    (root / "train" / "gone").symlink_to(root / "no such folder", target_is_directory=True)
    bad["train/gone"] = "broken symbolic link"
    # a file name that is not valid UTF-8, and a broken link
    fd = os.open(os.path.join(os.fsencode(root / "train" / "stripes"), NOT_UTF8), os.O_WRONLY | os.O_CREAT)
    os.write(fd, (root / "train" / "stripes" / "stripes_0.png").read_bytes())
    os.close(fd)
    bad[f"train/stripes/{NOT_UTF8.decode('utf-8', 'replace')}"] = "not valid UTF-8; rename it"
    (root / "train" / "circle" / "moved.jpg").symlink_to(root / "nowhere.jpg")
    bad["train/circle/moved.jpg"] = "a broken link"
    os.mkfifo(root / "train" / "circle" / "pipe.jpg")  # opening a pipe would block training forever
    bad["train/circle/pipe.jpg"] = "not a regular file"
    if os.geteuid() != 0:  # root reads anything: the chmod 000 case only exists for other users
        locked = root / "train" / "circle" / "locked.png"
        shutil.copy(root / "train" / "circle" / "circle_0.png", locked)
        locked.chmod(0)
        bad["train/circle/locked.png"] = "permission denied"
    if leak:
        shutil.copy(root / "train" / "circle" / "circle_0.png", root / "val" / "circle" / "copy.png")
        shutil.copy(root / "train" / "circle" / "circle_0.png", root / "test" / "stripes" / "copy.png")
    return bad, good


def all_entries(root: Path, reported: set[str]) -> set[str]:
    """Every file below root (linked folders followed, each real folder once), and every folder with nothing in it,
    as a printable relative path; a folder in `reported` stands for everything in it."""
    out = set()
    seen: set[bytes] = set()
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root), followlinks=True):
        rel = os.path.relpath(dirpath, os.fsencode(root))
        shown = os.path.normpath(rel).decode("utf-8", "replace")
        if shown in reported or os.path.realpath(dirpath) in seen:
            out.add(shown)
            dirnames[:] = []
            continue
        seen.add(os.path.realpath(dirpath))
        for name in filenames:
            out.add(os.path.normpath(os.path.join(rel, name)).decode("utf-8", "replace"))
        if not dirnames and not filenames:
            out.add(shown)
    return out


@pytest.fixture
def corpus(tmp_path: Path):
    root = tmp_path / "messy data"
    bad, good = make_corpus(root)
    yield root, bad, good
    for p in root.rglob("*"):  # let pytest clean up a chmod 000 file
        if not p.is_symlink():
            p.chmod(0o755)


def test_discover_and_cache_skip_every_bad_file_with_a_reason(corpus, tmp_path: Path) -> None:
    root, bad, good = corpus
    found = discover(root)
    assert found.classes == ["circle", "square café", "stripes"]  # empty class left out, with a warning
    assert find_leakage(found) == []  # so training refuses nothing here
    assert any("empty class" in w for w in found.warnings)
    reasons = {os.path.relpath(s.path, root): s.reason for s in found.skipped}
    used: set[str] = set()
    for files in found.splits.values():
        cache = build_image_cache(files.paths, 16, "bilinear", tmp_path / "cache", workers=1)
        assert cache.ok.sum() + len(cache.bad) == len(files.paths)
        reasons.update({os.path.relpath(p, root): r for p, r in cache.bad})
        used.update(os.path.relpath(p, root) for p, ok in zip(files.paths, cache.ok, strict=True) if ok)
        rows = cache.store.read(np.flatnonzero(cache.ok))
        assert rows.shape[1:] == (16, 16, 3) and rows.dtype == np.uint8
    for path, fragment in bad.items():
        assert path in reasons, f"{path} not reported"
        assert fragment in reasons[path], (path, reasons[path])
    assert good <= used
    # nothing silently dropped: every file (and empty folder) is either used or listed with a reason
    assert all_entries(root, set(reasons)) == used | set(reasons)
    assert not used & set(reasons)


def test_discover_with_nested_and_unicode_class_names(corpus) -> None:
    root, _, _ = corpus
    found = discover(root)
    train = dict(zip(found.splits["train"].paths, found.splits["train"].labels, strict=True))
    nested = str(root / "train" / "circle" / "batch 2" / "ünïcödé" / "naïve image 1.png")
    assert found.classes[train[nested]] == "circle"
    assert any(found.classes[label] == "square café" for label in train.values())


def test_train_cli_on_the_messy_folder_lists_every_bad_file(corpus, tmp_path: Path) -> None:
    root, bad, _ = corpus
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "thawline",
            "train",
            "--data",
            str(root),
            "--model",
            "test_efficientnet",
            "--weights",
            "none",
            "--strategy",
            "head-only",
            "--epochs",
            "1",
            "--img-size",
            "32",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "THAWLINE_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    with open(out / "skipped.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    listed = {os.path.relpath(r["path"], root): r["reason"] for r in rows}
    for path, fragment in bad.items():
        assert path in listed, f"{path} missing from skipped.csv"
        assert fragment in listed[path]
    assert len(listed) == len(bad) == len(rows)
    left_out = discover(root).skipped  # not images, or whole folders; the rest did not decode
    folders = sum(s.folder for s in left_out)
    assert 0 < folders < len(left_out) < len(rows)
    assert (f"left out {len(left_out) - folders} file(s) that are not images, {folders} folder(s), "
            f"{len(rows) - len(left_out)} file(s) that cannot be decoded (listed in skipped.csv of the run)"
            ) in proc.stderr  # fmt: skip


# ------------------------------------------------------------------------------------------- fatal input


def one_error_line(capfd: pytest.CaptureFixture, argv: list[str], *fragments: str) -> str:
    code = main(argv)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("thawline: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    base = ["train", "--data", str(data), "--model", "test_efficientnet", "--weights", "none"]
    one_pass = ["--min-steps", "0", "--head-steps", "0"]  # an epoch is one pass (some tests count its steps)
    return [*base, "--strategy", "head-only", "--epochs", "1", "--img-size", "32", *one_pass, "--out", str(out), *extra]


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", {"train": 4, "val": 2}, classes=("a", "b"))


def test_fatal_data_folders(capfd, tmp_path: Path, small_folder: Path) -> None:
    out = tmp_path / "run"
    one_error_line(capfd, train_argv(tmp_path / "no such folder", out), "no such folder", "not found")
    only_val = small_folder / "val" / "c"
    only_val.mkdir()
    shutil.copy(small_folder / "val" / "a" / "a_0.png", only_val / "c_0.png")
    one_error_line(capfd, train_argv(small_folder, out), "class 'c'", "not in", "add training images")
    shutil.rmtree(only_val)
    shutil.rmtree(small_folder / "train" / "b")
    shutil.rmtree(small_folder / "val" / "b")
    one_error_line(capfd, train_argv(small_folder, out), "1 class folder(s)", "at least 2")
    (small_folder / "val").rename(small_folder / "valid")
    shutil.copytree(small_folder / "valid", small_folder / "val")
    one_error_line(capfd, train_argv(small_folder, out), "'val/' and 'valid/'", "two val folders", "merge")
    shutil.rmtree(small_folder / "val")
    shutil.rmtree(small_folder / "valid")
    one_error_line(capfd, [*train_argv(small_folder, out), "--val-split", "0"], "no val/ folder", "--val-split 0.2")
    one_error_line(capfd, [*train_argv(small_folder, out), "--val-split", "0.7", "--test-split", "0.3"], "sum")
    (small_folder / "train").rename(small_folder / "test")
    one_error_line(capfd, train_argv(small_folder, out), "has test/ but no train/ folder")


def test_fatal_options(capfd, tmp_path: Path, small_folder: Path) -> None:
    out = tmp_path / "run"
    config = tmp_path / "broken.yaml"
    config.write_text("epochs: [1, 2\nlr: 0.1\n")
    one_error_line(capfd, [*train_argv(small_folder, out), "--config", str(config)], "not valid YAML", "line")
    argv = train_argv(small_folder, out)
    argv[argv.index("test_efficientnet")] = "test_efficientnett"
    one_error_line(capfd, argv, "test_efficientnett")
    argv = train_argv(small_folder, out)
    argv[argv.index("head-only")] = "head_only"
    one_error_line(capfd, argv, "unknown strategy 'head_only'", "head-only")
    # an epoch budget too short for a strategy's phases is said before any data is read (here: there is none)
    argv = train_argv(tmp_path / "no such folder", out)
    argv[argv.index("head-only")] = "two-phase"
    one_error_line(capfd, argv, "strategy 'two-phase' has 2 phases; give it at least --epochs 2")
    compare = ["compare", "--data", str(tmp_path / "no such folder"), "--strategies", "head-only,two-phase",
               "--epochs", "1", "--out", str(tmp_path / "cmp")]  # fmt: skip
    one_error_line(capfd, compare, "strategy 'two-phase' has 2 phases", "give it at least --epochs 2")
    assert not (tmp_path / "cmp").exists()


def test_unwritable_out_is_one_line(capfd, tmp_path: Path, small_folder: Path) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    one_error_line(capfd, train_argv(small_folder, blocker / "run"), "cannot write to run folder", "writable --out")
    if os.geteuid() != 0:  # root may write into a read-only folder
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o555)
        one_error_line(capfd, train_argv(small_folder, locked / "run"), "cannot write to run folder")


def test_discover_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ThawlineError) as info:
        discover(tmp_path / "missing")
    assert "\n" not in str(info.value)


def test_unreadable_split_folder_is_one_line(small_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 on train/ cannot stop root, so the PermissionError it would cause is injected."""
    real_iterdir = Path.iterdir

    def iterdir(self: Path):
        if self == small_folder / "train":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(ThawlineError, match=r"cannot read folder '.*train' \(Permission denied\); make it readable"):
        discover(small_folder)


def _epochs_in(checkpoint: Path) -> int:
    from thawline.training.checkpoint import load_checkpoint

    return int(load_checkpoint(checkpoint)["global_epoch"])


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(
    capfd, tmp_path: Path, small_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC half-way through the epoch-2 checkpoint: one line, epoch 1's last.pt intact, no temp file left."""
    import errno

    import thawline.training.checkpoint as checkpoint

    real_save, calls = checkpoint.torch.save, {"n": 0}

    def save_then_fill_the_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if obj.get("global_epoch", 0) >= 2:
            f.write(b"\x80partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fill_the_disk)
    out = tmp_path / "run"
    argv = train_argv(small_folder, out)
    argv[argv.index("--epochs") + 1] = "2"
    one_error_line(capfd, argv, "disk full while writing checkpoint", "free space", "previous checkpoint is intact")
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert _epochs_in(out / "last.pt") == 1
    assert not list(out.glob(".*.tmp"))


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_epoch(
    capfd, tmp_path: Path, small_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    calls = {"n": 0}
    steps_per_epoch = 1  # 8 train images, batch 32

    class PoisonedLoss(torch.nn.CrossEntropyLoss):
        def forward(self, logits, target):
            calls["n"] += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if calls["n"] > steps_per_epoch else loss

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", PoisonedLoss)
    out = tmp_path / "run"
    argv = train_argv(small_folder, out)
    argv[argv.index("--epochs") + 1] = "3"
    one_error_line(capfd, argv, "loss became nan", "lower the learning rate", "last.pt keeps the last good epoch")
    assert _epochs_in(out / "last.pt") == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


# ------------------------------------------------------------------ classes and splits lost to files that fail


def test_a_class_whose_training_images_all_fail_to_decode_is_refused(capfd, tmp_path: Path, small_folder: Path) -> None:
    """Three classes on disk, one of them only broken files: training it would report a 3-class model that can never
    predict the third; refused in one line naming the class and a file."""
    ghost = small_folder / "train" / "ghost"
    ghost.mkdir()
    for i in range(3):
        (ghost / f"g{i}.jpg").write_text("not a jpeg")
    (small_folder / "val" / "ghost").mkdir()
    shutil.copy(small_folder / "val" / "a" / "a_0.png", small_folder / "val" / "ghost" / "g.png")
    one_error_line(capfd, train_argv(small_folder, tmp_path / "run"), "class 'ghost'", "g0.jpg", "remove the folder")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_split_that_does_not_decode_names_a_file(capfd, tmp_path: Path, small_folder: Path) -> None:
    for f in (small_folder / "val").rglob("*.png"):
        f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)  # a PNG signature and nothing after it
    line = one_error_line(capfd, train_argv(small_folder, tmp_path / "run"), "none of the 4", "val", "data check")
    assert "a_0.png" in line  # the first file and why, not a pointer to a list that was never written


def test_a_class_folder_with_a_name_that_is_not_utf8_is_a_warning_not_a_file_count(
    capfd, tmp_path: Path, small_folder: Path
) -> None:
    lost = os.path.join(os.fsencode(small_folder / "train"), b"cl\xe9ss")
    os.mkdir(lost)
    shutil.copy(
        small_folder / "train" / "a" / "a_0.png", os.path.join(lost, b"x.png").decode("utf-8", "surrogateescape")
    )
    assert main(train_argv(small_folder, tmp_path / "run")) == 0
    err = capfd.readouterr().err
    assert "class folder '" in err and "is left out: class folder name is not valid UTF-8; rename it" in err
    assert "left out 1 folder(s)" in err  # counted as a folder, not as a file that is not an image


def test_identical_files_that_do_not_decode_are_not_leakage(capfd, tmp_path: Path, small_folder: Path) -> None:
    for split in ("train", "val"):
        (small_folder / split / "a" / "notes.jpg").write_text("the same text in both splits")
    assert main(train_argv(small_folder, tmp_path / "run")) == 0  # no refusal: nothing an image leaks
    assert "byte-identical" not in capfd.readouterr().err
    shutil.copy(small_folder / "train" / "b" / "b_0.png", small_folder / "val" / "b" / "copy.png")
    one_error_line(
        capfd, train_argv(small_folder, tmp_path / "run2"), "1 file(s) in val are byte-identical", "copy.png"
    )
