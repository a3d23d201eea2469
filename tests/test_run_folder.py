"""Who may write a run folder: a bare --resume finds the latest unfinished run, a lock keeps a second process out,
--overwrite replaces a run (and only a run), a folder replaced mid-run stops the run with nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import one_error_line, tiny_config

import thawline
from thawline.cli import main
from thawline.core.errors import ThawlineError
from thawline.training.runfolder import LOCK_NAME, RunLock, latest_unfinished, next_run_dir

TINY = ["--model", "test_efficientnet", "--weights", "none", "--img-size", "32", "--batch-size", "8",
        "--workers", "1", "--lr", "3e-3", "--quiet"]  # fmt: skip


def epochs_logged(folder: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    from thawline.cli import commands

    monkeypatch.setattr(commands, "_report", lambda run_dir: None)  # report.html is tested elsewhere


# ---- a bare --resume ---------------------------------------------------------------------------------------------


def test_bare_resume_continues_the_latest_unfinished_run(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, no_report
) -> None:
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    for name in ("older", "newer"):
        cfg = tiny_config(image_folder, strategy="two-phase", epochs=3)
        paused = thawline.train(cfg, run_dir=runs / name, quiet=True, stop_after_epoch=1)
        assert paused.summary is None and epochs_logged(runs / name) == [1]
        time.sleep(0.02)
    finished = thawline.train(tiny_config(image_folder, strategy="head-only", epochs=1), run_dir=runs / "done")
    assert finished.summary is not None  # the newest folder of all, but finished: not a candidate
    assert latest_unfinished("train", Path("runs")) == Path("runs/newer")

    assert main(["train", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming runs/newer (the latest unfinished run in runs/)" in err
    assert epochs_logged(runs / "newer") == [1, 2, 3] and (runs / "newer" / "summary.json").is_file()
    assert not (runs / "older" / "summary.json").exists()  # only the latest was touched
    assert main(["train", "--resume"]) == 0  # then the next one
    assert (runs / "older" / "summary.json").is_file()
    assert sorted(p.name for p in runs.iterdir()) == ["done", "newer", "older"]  # no new run folder was started
    capsys.readouterr()
    assert main(["train", "--resume"]) == 2  # nothing left to resume: one line that says how
    one_error_line(capsys, "no unfinished run in 'runs/'", "thawline train --resume DIR")
    assert main(["compare", "--resume"]) == 2
    one_error_line(capsys, "no unfinished comparison in 'runs/'")
    assert main(["train", "--resume", str(runs / "older"), "--overwrite"]) == 2
    one_error_line(capsys, "--resume continues a run and --overwrite replaces it")


def test_bare_compare_resume_finishes_the_latest_unfinished_comparison(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    thawline.compare(tiny_config(image_folder, epochs=1), ["head-only", "full"], out="runs/compare-1", quiet=True)
    first = Path("runs/compare-1")
    stamp = (first / "head-only" / "summary.json").stat().st_mtime_ns
    (first / "comparison.json").unlink()  # as if stopped after its strategies and before its table
    (first / "full" / "summary.json").unlink()  # and full not finished
    assert main(["compare", "--resume", "--quiet"]) == 0
    assert "resuming runs/compare-1 (the latest unfinished comparison in runs/)" in capsys.readouterr().err
    assert (first / "comparison.json").is_file() and (first / "full" / "summary.json").is_file()
    assert (first / "head-only" / "summary.json").stat().st_mtime_ns == stamp  # finished strategies are kept
    assert sorted(p.name for p in Path("runs").iterdir()) == ["compare-1"]


# ---- one process per folder --------------------------------------------------------------------------------------


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`'s run lock until killed (as a running thawline would)."""
    code = (
        "import sys, time; from pathlib import Path; from thawline.training.runfolder import RunLock\n"
        "lock = RunLock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_kept_out_of_a_run_folder_and_a_killed_holder_leaves_no_stale_lock(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_report
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    holder = hold_lock(folder)
    try:
        argv = ["train", "--data", str(image_folder), *TINY, "--strategy", "head-only", "--epochs", "1"]
        assert main([*argv, "--out", str(folder)]) == 2
        one_error_line(capsys, f"'{folder}' is in use by another thawline process (pid {holder.pid})", "another --out")
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written beside the lock
        with pytest.raises(ThawlineError, match="in use by another thawline process"):
            thawline.compare(tiny_config(image_folder, epochs=1), ["head-only"], out=folder, quiet=True)
        with pytest.raises(ThawlineError, match="in use"):
            RunLock(folder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL drops the lock with the process: the folder is free at once, and the run owns it while it trains
    assert main([*argv, "--out", str(folder)]) == 0, capsys.readouterr().err
    assert (folder / "summary.json").is_file()
    with RunLock(folder) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())


def test_run_folders_are_claimed_by_mkdir_so_two_callers_never_share_one(tmp_path: Path) -> None:
    a, b = next_run_dir(tmp_path, "compare"), next_run_dir(tmp_path, "compare")
    assert (a.name, b.name) == ("compare-1", "compare-2") and a.is_dir() and b.is_dir()
    assert next_run_dir(tmp_path, "compare", create=False) == tmp_path / "compare-3"
    assert not (tmp_path / "compare-3").exists()  # torchrun ranks other than 0 only name it


# ---- --overwrite -------------------------------------------------------------------------------------------------


def test_overwrite_replaces_a_run_and_refuses_a_folder_that_holds_no_run(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_report
) -> None:
    folder = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), *TINY, "--out", str(folder)]
    assert main([*argv, "--strategy", "full", "--epochs", "2"]) == 0
    (folder / "notes.txt").write_text("the old run's")
    assert main([*argv, "--strategy", "head-only", "--epochs", "1"]) == 2
    one_error_line(capsys, "holds a run", "--overwrite to replace it")
    assert epochs_logged(folder) == [1, 2]  # refused: untouched

    assert main([*argv, "--strategy", "head-only", "--epochs", "1", "--overwrite"]) == 2
    one_error_line(capsys, "holds notes.txt, which thawline did not write; nothing was removed")
    assert (folder / "notes.txt").read_text() == "the old run's" and epochs_logged(folder) == [1, 2]
    (folder / "notes.txt").unlink()  # the user's file moved out: the run's own files are replaced
    assert main([*argv, "--strategy", "head-only", "--epochs", "1", "--overwrite"]) == 0
    assert epochs_logged(folder) == [1]
    assert json.loads((folder / "summary.json").read_text())["strategy"] == "head-only"

    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"not a run")
    assert main([*argv[:-1], str(other), "--strategy", "head-only", "--epochs", "1", "--overwrite"]) == 2
    one_error_line(capsys, f"'{other}' was not created by thawline", "new --out")
    assert (other / "holiday.jpg").read_bytes() == b"not a run"


def test_a_fresh_comparison_into_an_old_one_is_refused_unless_overwrite(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    thawline.compare(tiny_config(image_folder, epochs=1), ["head-only"], out=out, quiet=True)
    before = (out / "compare.yaml").read_text()
    with pytest.raises(ThawlineError, match="holds a comparison .compare.yaml.; pass --resume .*--overwrite"):
        thawline.compare(tiny_config(image_folder, epochs=2), ["full"], out=out, quiet=True)
    assert (out / "compare.yaml").read_text() == before  # the refused call replaced nothing
    result = thawline.compare(tiny_config(image_folder, epochs=2), ["full"], out=out, quiet=True, overwrite=True)
    assert result.winner == "full" and not (out / "head-only").exists()


# ---- the folder replaced under a running run ---------------------------------------------------------------------


def test_a_folder_replaced_mid_run_stops_the_run_and_the_moved_folder_resumes_bit_identical(
    image_folder: Path, tmp_path: Path
) -> None:
    import torch

    cfg = tiny_config(image_folder, strategy="two-phase", epochs=3)
    straight = thawline.train(cfg, run_dir=tmp_path / "straight", quiet=True)
    folder, moved = tmp_path / "run", tmp_path / "run-moved"

    def replace_folder(row: dict) -> None:
        if row["epoch"] == 2:  # after epoch 1's checkpoint, while epoch 2 is being written: mv run run-moved
            folder.rename(moved)
            folder.mkdir()  # and a new folder of the same name (a script, a sync tool)

    with pytest.raises(ThawlineError, match="was moved, deleted or replaced while the run was writing it"):
        thawline.train(cfg, run_dir=folder, quiet=True, on_epoch=replace_folder)
    assert list(folder.iterdir()) == []  # nothing of the run went into the new folder
    assert epochs_logged(moved) == [1, 2]  # the line of epoch 2 was written before the hook ran ...
    resumed = thawline.train(cfg, run_dir=moved, resume=True, quiet=True)  # ... and is dropped: last.pt holds 1
    assert epochs_logged(moved) == [1, 2, 3]
    a = torch.load(straight.run_dir / "last.pt", weights_only=False)["model"]
    b = torch.load(resumed.run_dir / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    folder.rmdir()  # deleted outright: the same one line at the next epoch's first write
    with pytest.raises(ThawlineError, match="was moved, deleted or replaced"):
        thawline.train(cfg, run_dir=folder, quiet=True, on_epoch=lambda row: row["epoch"] == 1 and rm(folder))


def rm(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder)
