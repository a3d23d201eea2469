"""What a sweep writes and prints: trials.csv, sweep_summary.json, best_strategy.yaml and best_config.yaml (once a
trial completed), the console table of trials and the closing lines."""

from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thawline.comparing.sweep_study import finished_count, state_counts
from thawline.core.atomic import write_text_atomic
from thawline.core.config import TrainConfig
from thawline.core.runformat import SWEEP_SUMMARY, TRIALS_CSV


@dataclass
class SweepResult:
    out_dir: Path
    study_name: str
    storage: str  # password hidden
    summary: dict[str, Any]
    rows: list[dict[str, Any]]  # one per trial, as in trials.csv
    best_config: Path | None
    best_strategy: Path | None


def _duration(trial: Any) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return round((trial.datetime_complete - trial.datetime_start).total_seconds(), 2)


def _short_params(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        if key == "strategy":
            continue
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


# ---- outputs ----------------------------------------------------------------------------------------------

TRIAL_COLUMNS = ("number", "state", "value", "strategy", "duration_s", "params", "test_acc", "run_dir", "error")


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.state.name in ("COMPLETE", "PRUNED") else None,
                "strategy": t.params.get("strategy"),
                "duration_s": _duration(t),
                "params": t.params,
                "test_acc": t.user_attrs.get("test_acc"),
                "run_dir": t.user_attrs.get("run_dir"),
                "error": t.user_attrs.get("error"),
            }
        )
    return rows


def write_outputs(
    study: Any, out_dir: Path, config: TrainConfig, target: int, shown: str, budget: int, wall: float
) -> SweepResult:
    """trials.csv, sweep_summary.json and, once a trial completed, best_strategy.yaml + best_config.yaml."""
    import optuna

    rows = trial_rows(study)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TRIAL_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "params": json.dumps(r["params"], sort_keys=True)})
    write_text_atomic(out_dir / TRIALS_CSV, buf.getvalue())

    counts = state_counts(study)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    summary: dict[str, Any] = {
        "study": study.study_name,
        "storage": shown,
        "objective": "best validation accuracy (maximised)",
        "trials_target": target,
        "trials_finished": finished_count(counts),
        "states": counts,
        "search": study.user_attrs.get("thawline_search"),
        "best": None,
        "worker_wall_time_s": round(wall, 2),
        "trial_time_s": round(sum(r["duration_s"] or 0 for r in rows), 2),
    }
    best_config = best_strategy = None
    if complete:
        best = study.best_trial
        spec = best.user_attrs.get("strategy")
        summary["best"] = {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "test_acc": best.user_attrs.get("test_acc"),
            "run_dir": best.user_attrs.get("run_dir"),
            "strategy": spec,
        }
        if spec:
            best_strategy, best_config = _write_best(out_dir, config, best, spec, budget)
            summary["best_config"] = str(best_config)
            summary["best_strategy"] = str(best_strategy)
    else:
        summary["best_omitted"] = "no trial has completed yet"
    if len({t.value for t in complete}) == 1 and len(complete) >= 2:
        summary["importances_omitted"] = f"all {len(complete)} complete trials have the same value"
    elif len(complete) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study)
            summary["importances"] = {k: round(float(v), 4) for k, v in importances.items()}
        except Exception as e:  # noqa: BLE001 - e.g. every complete trial has the same value
            summary["importances_omitted"] = f"optuna could not compute them: {e}"
    else:
        summary["importances_omitted"] = f"needs at least 2 complete trials, the study has {len(complete)}"
    write_text_atomic(out_dir / SWEEP_SUMMARY, json.dumps(summary, indent=2, default=str))
    return SweepResult(out_dir, study.study_name, shown, summary, rows, best_config, best_strategy)


def _write_best(out_dir: Path, config: TrainConfig, best: Any, spec: dict[str, Any], budget: int) -> tuple[Path, Path]:
    import yaml

    base = best.params.get("strategy", "strategy")
    name = f"{base}-tuned"
    strategy_file = out_dir / "best_strategy.yaml"
    header = f"# best trial {best.number} of the sweep in {out_dir} (val acc {best.value:.2%})\n"
    write_text_atomic(
        strategy_file,
        header
        + "# use with --strategies-file; phase epochs are shares of --epochs\n"
        + yaml.safe_dump({"strategies": {name: spec}}, sort_keys=False),
    )
    values = {k: v for k, v in config.to_dict().items() if v is not None and k not in ("out", "extra", "lr")}
    values.update({"strategy": name, "strategies_file": str(strategy_file), "epochs": budget})
    if values.get("data"):
        values["data"] = str(Path(values["data"]).absolute())
    if values.get("cache_dir"):
        values["cache_dir"] = str(Path(values["cache_dir"]).absolute())
    config_file = out_dir / "best_config.yaml"
    write_text_atomic(
        config_file,
        header
        + "# thawline train --config best_config.yaml (flags given there win over this file)\n"
        + yaml.safe_dump(values, sort_keys=False),
    )
    return strategy_file, config_file


def format_table(rows: list[dict[str, Any]], limit: int = 10) -> str:
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3, "WAITING": 4}
    ranked = sorted(rows, key=lambda r: (order.get(r["state"], 5), -(r["value"] or 0), r["number"]))
    header = f"{'trial':>5}  {'state':<8} {'val acc':>8} {'strategy':<12} {'secs':>6}  params"
    lines = [header, "-" * 90]
    for r in ranked[:limit]:
        value = "-" if r["value"] is None else f"{r['value']:.2%}"
        secs = "-" if r["duration_s"] is None else f"{r['duration_s']:.0f}"
        lines.append(
            f"{r['number']:>5}  {r['state'].lower():<8} {value:>8} {r['strategy'] or '-':<12} {secs:>6}  "
            f"{_short_params(r['params'])}"
        )
    if len(ranked) > limit:
        lines.append(f"... {len(ranked) - limit} more in trials.csv")
    return "\n".join(lines)


def _closing_lines(result: SweepResult) -> str:
    s = result.summary
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(s["states"].items()))
    lines = [f"{s['trials_finished']}/{s['trials_target']} trials finished ({states})"]
    best = s.get("best")
    if best:
        spec = best.get("strategy") or {}
        phases = " -> ".join(
            f"{p['train']} x{p['epochs']} @ {p['lr']:g}"
            + (f" decay {p['layer_decay']:g}" if p["layer_decay"] != 1 else "")
            for p in spec.get("phases", [])
        )
        lines.append(
            f"best: trial {best['trial']} {best['params'].get('strategy')} val acc {best['value']:.2%}: {phases}"
        )
    if "importances" in s:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in s["importances"].items()))
    if result.best_config:
        lines.append(f"train it: thawline train --config {result.best_config}")
    lines.append(f"wrote {result.out_dir / SWEEP_SUMMARY} and {result.out_dir / TRIALS_CSV}")
    return "\n".join(lines)
