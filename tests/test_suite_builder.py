"""The benchmark suite builder (benchmarks/suite/build.py): folder layout, counts, determinism, no leakage."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parents[1] / "benchmarks" / "suite" / "build.py"
TASKS = ["count-shapes", "textures"]
SCALE = 0.1


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("suite_build_under_test", BUILD)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_procedural_tasks_layout_counts_determinism_and_no_leakage(build, tmp_path):
    first = build.build_suite(tmp_path / "a", TASKS, scale=SCALE, log=None)
    build.build_suite(tmp_path / "b", TASKS, scale=SCALE, log=None)
    assert set(first["built"]) == set(TASKS) and not first["skipped"]

    # same bytes twice: every image and every manifest
    hashes_a, hashes_b = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    assert hashes_a == hashes_b
    assert sum(name.endswith(".png") for name in hashes_a) > 0

    suite = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert [t["task"] for t in suite["tasks"]] == TASKS

    for name in TASKS:
        task = build.TASKS[name]
        root = tmp_path / "a" / name
        manifest = json.loads((root / "manifest.json").read_text())
        expected = build.scaled_counts(task, SCALE)
        assert manifest["classes"] == task.classes
        assert 16 <= manifest["img_size"] <= 1024
        split_hashes = {}
        for split in ("train", "val", "test"):
            folders = sorted(p.name for p in (root / split).iterdir())
            assert folders == sorted(task.classes)
            for cls in task.classes:
                files = sorted((root / split / cls).glob("*.png"))
                assert len(files) == expected[split] == manifest["per_class"][split][cls]
            assert manifest["counts"][split] == expected[split] * len(task.classes)
            split_hashes[split] = {hashlib.sha256(p.read_bytes()).digest() for p in (root / split).rglob("*.png")}
            assert len(split_hashes[split]) == manifest["counts"][split]  # no identical images within a split
        assert not split_hashes["train"] & split_hashes["test"]
        assert not split_hashes["train"] & split_hashes["val"]
        assert not split_hashes["val"] & split_hashes["test"]


def test_rebuild_is_reused_and_unknown_task_is_refused(build, tmp_path):
    build.build_suite(tmp_path, ["count-shapes"], scale=SCALE, log=None)
    stamp = (tmp_path / "count-shapes" / "manifest.json").stat().st_mtime_ns
    build.build_suite(tmp_path, ["count-shapes"], scale=SCALE, log=None)
    assert (tmp_path / "count-shapes" / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(KeyError, match="unknown task"):
        build.build_suite(tmp_path, ["no-such-task"], log=None)
