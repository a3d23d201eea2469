"""Packaging: `thawline --version` says the installed version, and `python -m build` makes a wheel that holds every
module, the report's template and the license (installing it with torch in a fresh venv is a by-hand check: too slow
for the suite)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _project_version() -> str:
    return re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def test_version_flag_prints_the_version(capsys):
    from thawline.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"thawline {_project_version()}"


def test_version_flag_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "thawline", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"thawline {_project_version()}"


def test_package_version_matches_the_metadata():
    import thawline

    assert thawline.__version__ == _project_version()


@pytest.mark.slow
def test_wheel_holds_modules_templates_and_license(tmp_path: Path):
    pytest.importorskip("build", reason="the `build` package is not installed (pip install -e '.[test]')")
    # --no-isolation: the venv's setuptools builds it, so the test needs no package index
    out = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (wheel,) = tmp_path.glob("thawline-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    src = ROOT / "src"
    modules = {p.relative_to(src).as_posix() for p in (src / "thawline").rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel"
    templates = {p.relative_to(src).as_posix() for p in (src / "thawline" / "report" / "templates").iterdir()}
    assert templates and templates <= names, "report templates missing from the wheel"
    assert "thawline/py.typed" in names  # PEP 561: type checkers read the package's hints
    dist_info = f"thawline-{_project_version()}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert f"{dist_info}/entry_points.txt" in names
    with zipfile.ZipFile(wheel) as zf:
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    assert "thawline = thawline.cli:main" in entry_points
    assert f"Version: {_project_version()}" in metadata
    assert "License-Expression: MIT" in metadata
