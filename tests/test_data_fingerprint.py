"""--resume never mixes two data sets: a run (and a comparison) records its files in data.csv and refuses to continue
on a data folder whose files were removed, added, changed or renamed since (issue 32, item 4)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _draw, interrupt_after_checkpoint, make_image_folder, one_error_line, tiny_config
from PIL import Image

import thawline
from thawline.cli import main
from thawline.comparing.executor import finished_run
from thawline.core.config import replace
from thawline.core.errors import ThawlineError
from thawline.training.checkpoint import load_checkpoint
from thawline.training.prepare import prepare_data

TINY_ARGS = ["--model", "test_efficientnet", "--weights", "none", "--img-size", "32", "--batch-size", "8",
             "--workers", "1", "--lr", "3e-3", "--min-steps", "0", "--head-steps", "0"]  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def new_image(path: Path, kind: str, seed: int) -> None:
    """An image no other file of the folder has the bytes of (its own seed)."""
    Image.fromarray(_draw(kind, np.random.default_rng(1000 + seed))).save(path)


def edit_data(data: Path) -> None:
    """The issue's edit: 3 val images removed, 2 added; one train image replaced by other bytes, same name."""
    for cls, i in (("circle", 0), ("circle", 1), ("square", 0)):
        (data / "val" / cls / f"{cls}_{i}.png").unlink()
    new_image(data / "val" / "stripes" / "extra_0.png", "circle", 1)  # mislabelled: a circle among stripes
    new_image(data / "val" / "stripes" / "extra_1.png", "square", 2)
    new_image(data / "train" / "circle" / "circle_3.png", "circle", 3)


def touch_all(data: Path) -> None:
    """Every file's mtime moved an hour on: the bytes and names stay."""
    for path in data.rglob("*.png"):
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 3600 * 10**9))


# ---- train --resume ----------------------------------------------------------------------------------------------


def test_train_resume_on_changed_data_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 4})
    run = tmp_path / "run"
    interrupt_after_checkpoint(monkeypatch)
    args = ["train", "--data", str(data), *TINY_ARGS, "--strategy", "full", "--epochs", "2", "--quiet"]
    assert main([*args, "--out", str(run)]) == 130
    capsys.readouterr()
    listed = (run / "data.csv").read_text() if (run / "data.csv").exists() else ""

    edit_data(data)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    line = one_error_line(capsys, f"'{run}' was trained on other data", "train 1 changed", "val 3 removed, 2 added",
                          "pass a new --out")  # fmt: skip
    assert line.index("train 1 changed") < line.index("val 3 removed"), line  # splits in their usual order
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1], "a refused resume changed the run"
    assert not (run / "summary.json").exists()
    # what was checked: every file of the run as it started, one line each
    assert listed.splitlines()[0] == "split,path,label,key" and len(listed.splitlines()) == 1 + 3 * (8 + 4)
    assert "\nval,val/circle/circle_0.png,circle," in listed


def test_renamed_file_is_a_change_and_the_message_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 4})
    cfg = tiny_config(data, strategy="head-only", epochs=2)
    interrupt_after_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        thawline.train(cfg, run_dir=tmp_path / "run", quiet=True)
    (data / "val" / "square" / "square_2.png").rename(data / "val" / "square" / "renamed.png")
    with pytest.raises(ThawlineError) as e:
        thawline.train(cfg, run_dir=tmp_path / "run", resume=True, quiet=True)
    assert "val 1 renamed (same bytes, other path) (e.g. 'val/square/renamed.png' renamed)" in str(e.value)
    assert "\n" not in str(e.value)


def test_unchanged_data_with_new_mtimes_resumes_to_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 4})
    cfg = tiny_config(data, strategy="layer-wise", epochs=3)
    straight = thawline.train(cfg, run_dir=tmp_path / "straight", quiet=True)

    interrupt_after_checkpoint(monkeypatch, epoch=1)
    with pytest.raises(KeyboardInterrupt):
        thawline.train(cfg, run_dir=tmp_path / "resumed", quiet=True)
    listed = (tmp_path / "resumed" / "data.csv").read_bytes()
    touch_all(data)  # mtimes only: no change
    resumed = thawline.train(cfg, run_dir=tmp_path / "resumed", resume=True, quiet=True)

    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    for a, b in zip(straight.metrics, resumed.metrics, strict=True):
        assert all(a[k] == b[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")), (a, b)
    wa = load_checkpoint(tmp_path / "straight/last.pt")["model"]
    wb = load_checkpoint(tmp_path / "resumed/last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.summary["best_val_acc"] == straight.summary["best_val_acc"]
    assert (tmp_path / "resumed" / "data.csv").read_bytes() == listed  # kept as the run started, not rewritten
    assert listed == (tmp_path / "straight" / "data.csv").read_bytes()
    digest = resumed.summary["data_digest"]
    assert digest == straight.summary["data_digest"] and set(digest) == {"train", "val"}


def test_run_folder_without_data_csv_resumes_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run written before data.csv existed has nothing to check against: it resumes (and writes no list after the
    fact, which would claim files its first epochs may not have seen)."""
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 4})
    cfg = tiny_config(data, strategy="head-only", epochs=2)
    run = tmp_path / "run"
    interrupt_after_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        thawline.train(cfg, run_dir=run, quiet=True)
    (run / "data.csv").unlink(missing_ok=True)
    (data / "val" / "circle" / "circle_0.png").unlink()
    result = thawline.train(cfg, run_dir=run, resume=True, quiet=True)
    assert [r["epoch"] for r in result.metrics] == [1, 2]
    assert not (run / "data.csv").exists()


def test_held_out_val_changes_when_train_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Class folders alone: val is held out of train by content, so a file added to train can move files between
    train and val; data.csv lists each split as held out, and the resume is refused."""
    data = make_image_folder(tmp_path / "data", {"train": 10})
    cfg = tiny_config(data, strategy="head-only", epochs=2)
    interrupt_after_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        thawline.train(cfg, run_dir=tmp_path / "run", quiet=True)
    new_image(data / "train" / "circle" / "more.png", "circle", 7)
    with pytest.raises(ThawlineError, match=r"was trained on other data: train .*added"):
        thawline.train(cfg, run_dir=tmp_path / "run", resume=True, quiet=True)
    rows = (tmp_path / "run" / "data.csv").read_text().splitlines()[1:]  # val listed as held out of train/
    assert sum(r.startswith("train,train/") for r in rows) == 24 and sum(r.startswith("val,train/") for r in rows) == 6


# ---- compare --resume --------------------------------------------------------------------------------------------


def test_compare_resume_on_changed_data_is_refused_before_any_strategy_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The issue's reproduction: compare stopped during a strategy, 3 val images removed and 2 mislabelled ones
    added, `compare --resume DIR`: exit 2, one line, and nothing trained or ranked."""
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 4})
    out = tmp_path / "cmp"
    interrupt_after_checkpoint(monkeypatch)
    args = ["compare", "--data", str(data), *TINY_ARGS, "--strategies", "head-only,full", "--epochs", "2", "--quiet"]
    assert main([*args, "--out", str(out)]) == 130
    capsys.readouterr()

    edit_data(data)
    assert main(["compare", "--resume", str(out), "--quiet"]) == 2
    one_error_line(capsys, f"'{out}' holds a comparison started on other data", "val 3 removed, 2 added",
                   "train 1 changed")  # fmt: skip
    assert [r["epoch"] for r in read_jsonl(out / "head-only" / "metrics.jsonl")] == [1]
    assert not (out / "full").exists() and not (out / "comparison.json").exists()
    assert (out / "data.csv").is_file() and (out / "head-only" / "data.csv").is_file()

    # Put the data back as it was: the same comparison resumes and finishes.
    shutil.rmtree(data)
    make_image_folder(data, {"train": 8, "val": 4})
    touch_all(data)
    assert main(["compare", "--resume", str(out), "--quiet"]) == 0
    assert len(json.loads((out / "comparison.json").read_text())) == 2


def test_finished_strategy_trained_on_other_data_is_not_ranked(tmp_path: Path) -> None:
    """A finished run in a resumed comparison (executor.finished_run) is checked too: its data.csv against the data
    the comparison now trains on."""
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 4})
    cfg = tiny_config(data, strategy="head-only", epochs=1)
    run = tmp_path / "cmp" / "head-only"
    thawline.train(replace(cfg, out=str(run)), run_dir=run, quiet=True)
    assert finished_run(run, replace(cfg, out=str(run)), prepare_data(cfg, quiet=True)) is not None

    (data / "val" / "stripes" / "stripes_1.png").unlink()
    with pytest.raises(ThawlineError, match=r"head-only' was trained on other data: val 1 removed"):
        finished_run(run, replace(cfg, out=str(run)), prepare_data(cfg, quiet=True))


# ---- the list itself ---------------------------------------------------------------------------------------------


def test_differences_per_split() -> None:
    from thawline.data import fingerprint
    from thawline.data.fingerprint import Fingerprint

    saved = Fingerprint({"train": {"a.png": ("x", "01"), "b.png": ("y", "02"), "c.png": ("y", "03")},
                         "val": {"v.png": ("x", "04")}})  # fmt: skip
    same = Fingerprint({s: dict(files) for s, files in saved.splits.items()})
    assert fingerprint.differences(saved, same) == ([], None)
    now = Fingerprint({"train": {"a.png": ("y", "01"), "b2.png": ("y", "02"), "c.png": ("y", "03")},
                       "test": {"t.png": ("x", "05")}})  # fmt: skip
    parts, example = fingerprint.differences(saved, now)
    assert parts == [
        "train 1 changed (same path, other bytes or class), 1 renamed (same bytes, other path)",
        "val 1 removed",
        "test 1 added",
    ]
    assert example == "'a.png' changed"
    assert saved.digests()["train"] != now.digests()["train"] and same.digests() == saved.digests()


def test_data_csv_round_trips_odd_names_and_refuses_a_damaged_list(tmp_path: Path) -> None:
    from thawline.data import fingerprint
    from thawline.data.fingerprint import Fingerprint

    fp = Fingerprint({"train": {"a,b.png": ("x", "01"), 'q"uote\n.png': ("y", "02"), "\udcff.png": ("x", "03")}})
    fingerprint.write(tmp_path, fp)
    assert fingerprint.read(tmp_path) == fp
    assert fingerprint.read(tmp_path / "nothing") is None
    (tmp_path / "data.csv").write_text("path\nx\n")
    with pytest.raises(ThawlineError, match="is not a thawline data list"):
        fingerprint.read(tmp_path)
