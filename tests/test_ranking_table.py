"""The console table of a comparison: one aligned line per strategy whatever its number of phases."""

from __future__ import annotations

from thawline.report.ranking import format_table, rank, row_from_summary


def summary(val: float, per_phase: list[int], seconds: float) -> dict:
    return {"best_val_acc": val, "test_acc": val - 0.01, "epochs": 10, "train_time_s": seconds,
            "images_per_s": 100.0, "trainable_params": per_phase, "total_params": 3_386_380}  # fmt: skip


def test_trainable_params_cell_is_short_and_keeps_the_table_aligned() -> None:
    gradual = [15_372, 1_032_972, 2_685_612, 3_132_396, 3_330_876, 3_370_588, 3_384_556, 3_385_452, 3_386_380]
    rows = rank([
        row_from_summary("head-only", "a", summary(0.92, [15_372], 13.1)),
        row_from_summary("gradual", "b", summary(0.90, gradual, 58.1)),
        row_from_summary("two-phase", "c", summary(0.89, [15_372, 3_386_380], 20.0)),
        row_from_summary("full", "d", summary(0.88, [3_386_380], 80.0)),
    ])  # fmt: skip
    lines = format_table(rows).splitlines()
    assert len({len(line) for line in lines}) == 1  # every line as wide as the header
    by_name = {line.split()[1]: line for line in lines[2:]}
    assert by_name["head-only"].split()[-2] == "15.4k"
    assert by_name["gradual"].endswith("15.4k→3.39M (9 phases)     -27%")
    assert "15.4k→3.39M " in by_name["two-phase"] and "phases" not in by_name["two-phase"]
    assert by_name["full"].split()[-2:] == ["3.39M", "+0%"]
