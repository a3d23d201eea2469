"""Everything read from run files, with no torch: metrics and predictions.csv, bootstrap intervals, the comparison
table, figures, the advisor's rules and advise.json, report.html.

The public API for scripts (benchmarks/), loaded when first used:
- a run or compare folder as the report reads it: `load_run`, `load_folder`, `read_metrics` (metrics.jsonl rows),
  `read_predictions` (predictions.csv);
- how well a predicted ranking matches the measured one: `kendall_tau_b`, `oracle_tau` (the test set's noise
  ceiling).
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "load_folder": "thawline.report.runfiles",
    "load_run": "thawline.report.runfiles",
    "read_metrics": "thawline.report.runfiles",
    "read_predictions": "thawline.report.metrics",
    "kendall_tau_b": "thawline.report.agreement",
    "oracle_tau": "thawline.report.agreement",
}


def __getattr__(name: str) -> Any:  # `import thawline` reads advise.json through this package: nothing more loads
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thawline.report' has no attribute '{name}'")


__all__ = ["kendall_tau_b", "load_folder", "load_run", "oracle_tau", "read_metrics", "read_predictions"]
