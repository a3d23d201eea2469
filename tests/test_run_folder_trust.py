"""What thawline may write and delete: --overwrite empties only a folder thawline marked and only the entries its
format names; names that become folders are checked by one function; a strategies file cannot redefine a built-in;
a comparison refused before training leaves nothing that the same command would then call a comparison."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import one_error_line

from thawline.cli import main
from thawline.data.files import RUN_MARKER, marker_kind
from thawline.data.names import check_name, folder_name

TINY = ["--model", "test_efficientnet", "--weights", "none", "--img-size", "32", "--batch-size", "8",
        "--workers", "1", "--lr", "3e-3", "--epochs", "1", "--quiet"]  # fmt: skip


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    from thawline.cli import commands

    monkeypatch.setattr(commands, "_report", lambda run_dir: None)  # report.html is tested elsewhere


def project_folder(tmp_path: Path, image_folder: Path) -> Path:
    """A user's project: a git repository, its data, a script and its own config.yaml (a name runs use too)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    shutil.copytree(image_folder, proj / "data")
    (proj / "config.yaml").write_text("lr: 0.1\n")
    (proj / "train.py").write_text("x\n")
    return proj


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("command", ["train", "compare"])
def test_overwrite_never_deletes_a_users_files(
    command: str, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_report, monkeypatch
) -> None:
    proj = project_folder(tmp_path, image_folder)
    before = listing(proj)
    monkeypatch.chdir(proj)
    strategy = ["--strategy", "head-only"] if command == "train" else ["--strategies", "head-only"]
    assert main([command, "--data", "data", *TINY, *strategy, "--out", ".", "--overwrite"]) == 2
    one_error_line(capsys, "--overwrite: '.' was not created by thawline", "nothing in it is removed")
    assert [p for p in listing(proj) if p != ".thawline.lock"] == before  # .git, data/, train.py, config.yaml
    assert (proj / "config.yaml").read_text() == "lr: 0.1\n"
    # without --overwrite the user's config.yaml would be replaced by the run's: refused too
    assert main([command, "--data", "data", *TINY, *strategy, "--out", "."]) == 2
    one_error_line(capsys, "holds config.yaml, which thawline did not write")
    assert (proj / "config.yaml").read_text() == "lr: 0.1\n"


def test_overwrite_of_a_run_refuses_when_a_user_added_files_and_names_them(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_report
) -> None:
    run = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), *TINY, "--strategy", "head-only", "--out", str(run)]
    assert main(argv) == 0
    assert marker_kind(run) == "run" and json.loads((run / RUN_MARKER).read_text())["format"] == 1
    (run / "notes.txt").write_text("mine")
    (run / "photos").mkdir()
    (run / "photos" / "a.jpg").write_bytes(b"jpeg")
    (run / "report_files").mkdir()
    (run / "report_files" / "thesis.docx").write_bytes(b"doc")
    assert main([*argv, "--overwrite"]) == 2
    line = one_error_line(capsys, "notes.txt", "photos/", "report_files/thesis.docx", "nothing was removed")
    assert "summary.json" not in line
    assert (run / "notes.txt").exists() and (run / "summary.json").exists() and (run / "photos" / "a.jpg").exists()
    for extra in ("notes.txt", "photos", "report_files"):
        shutil.rmtree(run / extra) if (run / extra).is_dir() else (run / extra).unlink()
    assert main([*argv, "--overwrite"]) == 0  # a run folder with only the run's own files is replaced
    assert marker_kind(run) == "run"


def test_overwrite_replaces_a_comparison_with_its_runs_seeds_and_report(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--data", str(image_folder), *TINY, "--strategies", "head-only,partial-2/3", "--out", str(out)]
    assert main([*argv, "--seeds", "2"]) == 0
    assert marker_kind(out) == "compare" and marker_kind(out / "partial-2_3") == "run"
    assert (out / "report.html").exists() and (out / "seeds").is_dir()
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "seeds").exists() and (out / "comparison.json").exists()


def test_a_marked_folder_of_another_kind_is_not_a_run_nor_data(tmp_path: Path) -> None:
    (tmp_path / RUN_MARKER).write_text('{"kind": "something", "format": 1}')
    assert marker_kind(tmp_path) is None
    (tmp_path / RUN_MARKER).write_text("not json")
    assert marker_kind(tmp_path) is None


# ---- names that become folders -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "/abs", ".hidden", "a\\b", "", "x" * 101, "a\x1b[31m"])
def test_unsafe_names_are_refused_in_one_line(name: str) -> None:
    from thawline.core.errors import ThawlineError

    with pytest.raises(ThawlineError, match="cannot name a folder") as e:
        check_name(name, "strategy name", "rename it")
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)


def test_folder_names_of_built_in_spellings_stay_inside_their_parent() -> None:
    assert folder_name("partial-2/3") == "partial-2_3"
    assert folder_name("timm/resnet50.a1_in1k") == "timm_resnet50.a1_in1k"
    for name in ("..", ".", "/", "a/../..", "\x00"):
        folder = folder_name(name)
        assert "/" not in folder and folder not in ("", ".", "..") and not folder.startswith(".")


def write_strategies(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_a_strategy_named_dotdot_cannot_write_outside_the_comparison(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.yaml").write_text("mine\n")
    for name in ("'..'", "a/b", "'.'"):
        file = write_strategies(tmp_path / "s.yaml", f"{name}: {{phases: [{{train: all}}]}}\n")
        argv = ["compare", "--data", str(image_folder), *TINY, "--strategies-file", str(file),
                "--strategies", name.strip("'"), "--out", str(proj / "cmp")]  # fmt: skip
        assert main(argv) == 2
        one_error_line(capsys, "cannot name a folder", str(file))
    assert (proj / "config.yaml").read_text() == "mine\n" and not (proj / "cmp").exists()


def test_a_strategies_file_cannot_redefine_a_built_in(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for name in ("head-only", "full", "lp-ft", "partial-1/2", "partial-0.5"):
        file = write_strategies(tmp_path / "s.yaml", f"'{name}': {{phases: [{{train: all}}]}}\n")
        argv = ["train", "--data", str(image_folder), *TINY, "--strategies-file", str(file), "--strategy",
                "head-only", "--out", str(tmp_path / "run")]  # fmt: skip
        assert main(argv) == 2, name
        one_error_line(capsys, f"defines '{name}', which is a built-in strategy's name")
    assert not (tmp_path / "run").exists()
    file = write_strategies(tmp_path / "s.yaml", "my-head: {phases: [{train: head}]}\n")
    assert main(["strategies", "--strategies-file", str(file)]) == 0


def test_two_strategies_that_would_share_a_folder_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from thawline.comparing import options
    from thawline.core.errors import ThawlineError

    assert options.parse_strategies("partial-2/3,partial-1/2", None) == ["partial-2/3", "partial-1/2"]
    monkeypatch.setattr(options, "folder_name", lambda name: name.split("-")[0])  # two spellings, one folder
    with pytest.raises(ThawlineError, match="'partial-2/3' and 'partial-1/2' would share the run folder 'partial'"):
        options.parse_strategies("partial-2/3,partial-1/2", None)


# ---- a comparison refused before training ------------------------------------------------------------------------


def test_a_comparison_refused_for_leakage_can_be_run_again_once_fixed(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    leaked = image_folder / "val" / "circle" / "copy.png"
    shutil.copy(image_folder / "train" / "circle" / "circle_0.png", leaked)
    out = tmp_path / "cmp"
    argv = ["compare", "--data", str(image_folder), *TINY, "--strategies", "head-only", "--out", str(out)]
    assert main(argv) == 2
    first = one_error_line(capsys)
    assert main(argv) == 2  # the same refusal again, not "holds a comparison; pass --resume"
    assert one_error_line(capsys) == first and "holds a comparison" not in first
    leaked.unlink()
    assert main(argv) == 0
