"""Hostile text in what thawline reads (issue 32): YAML alias bombs, terminal escape sequences in class and file
names, and messages that must stay one whole, true line."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder

import thawline
from thawline.cli import main
from thawline.core import atomic, config
from thawline.core.config import load_yaml_mapping

SRC = str(Path(thawline.__file__).resolve().parents[1])  # the thawline under test, for a child process
# Raw control characters other than line breaks and tabs: what a terminal, a CSV cell or a page must never get.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# A class and a file whose names set the terminal's title (OSC), recolour and clear it (CSI).
EVIL_CLASS = "red\x1b[31mclass\x1b]0;pwned\x07"
EVIL_FILE = "img\x1b[2J\x1b]0;title\x07.png"


def alias_bomb(key: str) -> str:
    """The "billion laughs": 9 levels of 9 aliases, 9**9 strings from a 1 kB file, as option `key`'s value (the
    levels sit under lr_auto, a key a run's config.yaml has and make_config ignores)."""
    levels = ["  lol0: &l0 [" + ", ".join(['"lol"'] * 9) + "]"]
    levels += [f"  lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "lr_auto:\n" + "\n".join(levels) + f"\n{key}: *l8\n"


def one_error_line(capfd: pytest.CaptureFixture, argv: list[str], *fragments: str) -> str:
    code = main(argv)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("thawline: error:"), err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--model", "test_efficientnet", "--weights", "none", "--strategy", "head-only",
        "--epochs", "1", "--img-size", "32", "--min-steps", "0", "--head-steps", "0", "--workers", "1",
        "--out", str(out), *extra,
    ]  # fmt: skip


# ---- (6) YAML ----------------------------------------------------------------------------------------------------

BOMB_SCRIPT = textwrap.dedent(
    """
    import re, resource, sys, time
    import thawline.training.trainer  # torch and timm first: the limit below is on what reading the config may add
    from thawline.cli import main

    size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.RLIM_INFINITY))
    start = time.perf_counter()
    code = main(sys.argv[1:])
    print(f"seconds {time.perf_counter() - start:.3f}", file=sys.__stdout__)
    sys.exit(code)
    """
)


def test_an_alias_bomb_in_config_is_refused_in_one_line_at_once(tmp_path: Path) -> None:
    """Was: 33 s and 2.9 GB expanding the aliases into an error message's repr, then a MemoryError traceback. Run in
    a child with at most 1 GB more memory than torch's import took, so the old behaviour fails fast too."""
    config = tmp_path / "bomb.yaml"
    config.write_text(alias_bomb("seed"))
    assert config.stat().st_size < 1500
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    argv = train_argv(tmp_path / "data", tmp_path / "run", "--config", str(config))
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, *argv], capture_output=True, text=True, timeout=120, env=env
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0] == (
        f"thawline: error: config file '{config}' uses YAML anchors/aliases (& and *, line 2), which thawline does "
        "not read; write the values out"
    )
    assert float(proc.stdout.split("seconds ")[1]) < 2, proc.stdout


def test_anchors_without_a_bomb_are_refused_too_and_plain_yaml_still_reads(tmp_path: Path) -> None:
    shared = tmp_path / "shared.yaml"
    shared.write_text("lr: &lr 0.01\nhead_lr: *lr\n")
    with pytest.raises(Exception, match=r"uses YAML anchors/aliases \(& and \*, line 1\)"):
        load_yaml_mapping(shared)
    plain = tmp_path / "plain.yaml"
    plain.write_text("lr: 0.01\nclasses: [a, b]\nnote: 'a & b * c'\n")
    assert load_yaml_mapping(plain) == {"lr": 0.01, "classes": ["a", "b"], "note": "a & b * c"}


def test_an_oversized_yaml_file_is_refused_without_parsing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(config, "MAX_YAML_BYTES", 2**20)  # the bound scaled down (8 MB of YAML takes minutes to parse)
    big = tmp_path / "big.yaml"
    big.write_text("x: [" + "1, " * 2**19 + "1]\n")
    start = time.perf_counter()
    with pytest.raises(Exception, match=rf"config file '{big}' is over 1 MB, too large for a YAML file of options"):
        load_yaml_mapping(big)
    assert time.perf_counter() - start < 2


def test_a_huge_value_is_not_spelled_out_in_the_message(capfd, tmp_path: Path) -> None:
    config = tmp_path / "long.yaml"
    config.write_text(f"seed: {'9' * 100_000}x\n")
    line = one_error_line(capfd, [*train_argv(tmp_path / "data", tmp_path / "run"), "--config", str(config)], "seed")
    assert len(line) < 200, line


def test_a_yaml_error_in_a_strategies_file_names_a_strategies_file(capfd, tmp_path: Path) -> None:
    broken = tmp_path / "mine.yaml"
    broken.write_text("strategies:\n  mine: {phases: [\n")
    line = one_error_line(capfd, ["strategies", "--strategies-file", str(broken)], "not valid YAML")
    assert line.startswith(f"thawline: error: strategies file '{broken}' is not valid YAML"), line
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb("strategies"))
    one_error_line(
        capfd, ["strategies", "--strategies-file", str(bomb)], f"strategies file '{bomb}' uses YAML anchors/aliases"
    )


def test_the_report_does_not_expand_an_alias_bomb_in_a_run_file(tmp_path: Path) -> None:
    from thawline.report.runfiles import _read_yaml

    (tmp_path / "config.yaml").write_text(alias_bomb("seed"))
    start = time.perf_counter()
    assert _read_yaml(tmp_path / "config.yaml") is None
    assert time.perf_counter() - start < 2


# ---- (9) escape sequences in names -------------------------------------------------------------------------------


def test_terminal_text_escapes_controls_but_keeps_lines() -> None:
    from thawline.cli import terminal_text

    assert terminal_text("a\x1b[31mb\tc\r\nd\x9b\u202ee") == "a\\x1b[31mb\tc\r\nd\\x9b\\u202ee"
    assert terminal_text("already \\x1b escaped") == "already \\x1b escaped"  # no double escape
    assert terminal_text("bad byte \udcff, lone \ud800") == "bad byte \ufffd, lone \ufffd"


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with a class and a file whose names hold CSI and OSC sequences (Linux file systems allow ESC)."""
    root = make_image_folder(
        tmp_path_factory.mktemp("hostile") / "data", {"train": 4, "val": 2}, classes=("plain", EVIL_CLASS)
    )
    for split in ("train", "val"):
        first = root / split / "plain" / "plain_0.png"
        first.rename(first.with_name(EVIL_FILE))
    return root


def no_raw_controls(text: str, what: str) -> None:
    found = CONTROL.search(text)
    assert found is None, (what, text[max(0, found.start() - 80) : found.end() + 80])


def test_data_check_prints_no_escape_sequences(capfd, hostile_folder: Path) -> None:
    main(["data", "check", str(hostile_folder)])
    out, err = capfd.readouterr()
    no_raw_controls(out + err, "data check")
    assert "red\\x1b[31mclass\\x1b]0;pwned\\x07" in out, out


def test_train_report_predictions_and_predict_hold_no_raw_controls(
    capfd, recwarn, hostile_folder: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "run"
    assert main(train_argv(hostile_folder, out_dir)) == 0
    out, err = capfd.readouterr()
    no_raw_controls(out + err, "train")

    page = (out_dir / "report.html").read_text(encoding="utf-8")
    no_raw_controls(page, "report.html")
    assert "red\\x1b[31mclass\\x1b]0;pwned\\x07" in page  # shown, escaped once (not \\\\x1b)
    assert "\\\\x1b" not in page
    assert "could not be opened" not in page  # the grid finds the image its escaped predictions.csv row names
    rows = (out_dir / "predictions.csv").read_text(encoding="utf-8")
    no_raw_controls(rows, "predictions.csv")
    assert "img\\x1b[2J\\x1b]0;title\\x07.png" in rows

    for fmt in ("table", "csv", "json"):
        assert main(["predict", str(out_dir), str(hostile_folder / "val"), "--format", fmt]) == 0
        out, err = capfd.readouterr()
        no_raw_controls(out + err, f"predict --format {fmt}")
        assert "img" in out and "title" in out

    # the report reads its escaped predictions.csv back: classes still match, and the report rebuilds
    assert main(["report", str(out_dir)]) == 0
    out, err = capfd.readouterr()
    no_raw_controls(out + err + (out_dir / "report.html").read_text(encoding="utf-8"), "report")
    assert "is not among the run's classes" not in (out_dir / "report.html").read_text(encoding="utf-8")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]  # the figures name the class escaped too


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    data = make_image_folder(root / "data", {"train": 4, "val": 2, "test": 2}, classes=("a", "b"))
    assert main([*train_argv(data, root / "run"), "--quiet"]) == 0
    return root / "run"


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_predict_prints_file_names_escaped(capfd, tiny_run: Path, hostile_folder: Path, fmt: str) -> None:
    capfd.readouterr()
    assert main(["predict", str(tiny_run), str(hostile_folder / "val"), "--format", fmt]) == 0
    out, err = capfd.readouterr()
    no_raw_controls(out + err, f"predict --format {fmt}")
    assert "img\\x1b[2J\\x1b]0;title\\x07.png" in out, out


# ---- (10) messages -----------------------------------------------------------------------------------------------


def test_evaluate_on_a_full_disk_names_a_fix_evaluate_has(capfd, tiny_run: Path, monkeypatch) -> None:
    """Was: '(free space or pass --out elsewhere)', and `thawline evaluate` has no --out."""
    real_temp = atomic._temp

    def full(path: Path):
        if path.name.startswith("evaluation"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_temp(path)

    monkeypatch.setattr(atomic, "_temp", full)
    capfd.readouterr()
    code = main(["evaluate", str(tiny_run)])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and "--out" not in lines[0], lines[0]
    assert "free space or evaluate a copy of the run folder on a disk with room" in lines[0], lines[0]


def test_a_weights_file_holding_objects_is_one_whole_sentence(capfd, tmp_path: Path) -> None:
    """Was: torch's paragraph cut at 160 characters, mid-sentence ('Re-running `torch.'), with its bold escapes."""
    weights = tmp_path / "pickled.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Path("x")}, weights)
    data = make_image_folder(tmp_path / "data", {"train": 2, "val": 1}, classes=("a", "b"))
    argv = train_argv(data, tmp_path / "run")
    argv[argv.index("--weights") + 1] = str(weights)
    line = one_error_line(capfd, argv, f"cannot read weights file '{weights}'")
    assert "(it holds a Python object (pathlib" in line, line
    assert "torch.save(model.state_dict(), PATH) or a thawline checkpoint" in line, line
    assert "x1b" not in line and "Re-running" not in line and line.count("(") == line.count(")"), line
