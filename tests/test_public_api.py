"""The public API: `thawline` and the names each subpackage lists in `__all__`, which scripts (benchmarks/) use
instead of modules inside a subpackage; listing them loads nothing (no torch)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "thawline", "thawline.comparing", "thawline.report", "thawline.training", "thawline.models", "thawline.data",
]  # fmt: skip
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").rglob("*.py") if "third_party" not in p.parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def thawline_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) of every thawline import in a script (name None for `import thawline...`)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "thawline":
            found += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "thawline"]
    return found


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_benchmarks_use_the_public_api_only(path: Path) -> None:
    for module, name in thawline_imports(path):
        assert module in PACKAGES, f"{path.name} imports {module}: import from {' or '.join(PACKAGES)}"
        if name is not None:
            assert name in importlib.import_module(module).__all__, f"{path.name}: {name} is not in {module}.__all__"


def test_listing_the_public_api_loads_no_torch() -> None:
    code = f"import sys; import {', '.join(PACKAGES)}; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
