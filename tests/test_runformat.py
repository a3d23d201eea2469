"""core/runformat's key declarations: each key spelled as its field, and what a run and a comparison write has
exactly the declared keys in the declared order (the format checked from outside, by literal keys)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

import thawline
from thawline.core import runformat
from thawline.core.config import FIELD_NAMES
from thawline.core.runformat import CONFIG, DERIVED_KEYS, EPOCH, PHASE_RESULT, PLAN, ROW, SUMMARY

KEY_SETS = (SUMMARY, PHASE_RESULT, EPOCH, ROW, CONFIG, PLAN)
SHIFT_KEYS = ["shifted_acc", "shift_gap", "shift_sets", "shift_test"]  # only after compare --shift-test
FOLD_KEYS = ["fold", "folds"]  # only in a run of compare --folds
FOLDS_ROW_KEYS = ["oof_acc", "oof_acc_ci", "folds_acc", "p_folds"]  # only with compare --folds (last in the csv)


def keys(declared) -> list[str]:
    return [getattr(declared, f.name) for f in dataclasses.fields(declared)]


@pytest.mark.parametrize("declared", KEY_SETS, ids=lambda d: type(d).__name__)
def test_each_key_is_its_field_name_and_cannot_be_changed(declared) -> None:
    assert keys(declared) == [f.name for f in dataclasses.fields(declared)]
    assert len(set(keys(declared))) == len(keys(declared))
    with pytest.raises(dataclasses.FrozenInstanceError):
        declared.strategy = "other"  # type: ignore[misc]


def test_config_keys_are_options_or_derived() -> None:
    options = [k for k in keys(CONFIG) if k not in DERIVED_KEYS]
    assert set(options) <= set(FIELD_NAMES), set(options) - set(FIELD_NAMES)
    assert set(DERIVED_KEYS) <= set(keys(CONFIG)) and not set(DERIVED_KEYS) & set(FIELD_NAMES)
    assert list(runformat.COUNT_KEYS.values()) == ["num_train", "num_val", "num_test"]


def test_a_comparison_writes_the_declared_keys_in_order(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    thawline.compare(tiny_config(image_folder, epochs=2), ["head-only", "two-phase"], out=out, quiet=True)
    run = out / "two-phase"

    summary = json.loads((run / "summary.json").read_text())
    assert list(summary) == [k for k in keys(SUMMARY) if k not in SHIFT_KEYS + FOLD_KEYS]
    for phase in summary["phase_results"]:
        assert list(phase) == keys(PHASE_RESULT)

    declared = keys(EPOCH)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = list(json.loads(line))
        assert row == [k for k in declared if k in row] and set(row) <= set(declared), row

    config = yaml.safe_load((run / "config.yaml").read_text())
    optional = {"strategy_head", "lr_auto", "class_weight_values", "fold", "folds"}  # fold: a run of compare --folds
    assert set(keys(CONFIG)) - optional <= set(config), set(keys(CONFIG)) - set(config)
    assert [k for k in config if k in DERIVED_KEYS] == [k for k in DERIVED_KEYS if k in config]

    rows = json.loads((out / "comparison.json").read_text())
    for row in rows:
        assert set(row) <= set(keys(ROW)), set(row) - set(keys(ROW))
    with open(out / "comparison.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == [k for k in keys(ROW) if k not in ["tie_split", *FOLDS_ROW_KEYS]]

    plan = yaml.safe_load((out / "compare.yaml").read_text())
    assert list(plan) == keys(PLAN)
