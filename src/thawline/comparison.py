"""Run several strategies on the same data, model, seed and epoch budget; rank them in one table."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thawline import distributed
from thawline.config import TrainConfig, atomic_write_text, replace, save_yaml
from thawline.errors import ThawlineError
from thawline.strategies import get_strategy
from thawline.trainer import RunResult, data_settings, next_run_dir, prepare_data, train
from thawline.weights import build_model_with_info

DEFAULT_STRATEGIES = ("head-only", "two-phase", "partial", "full", "scratch")

COLUMNS = (
    "rank",
    "strategy",
    "best_val_acc",
    "test_acc",
    "epochs",
    "wall_time_s",
    "train_time_s",
    "images_per_s",
    "trainable_params",
    "peak_rss_mb",
    "time_vs_full",
    "run_dir",
)


@dataclass
class CompareResult:
    out_dir: Path
    runs: dict[str, RunResult]
    rows: list[dict[str, Any]]

    @property
    def winner(self) -> str:
        return self.rows[0]["strategy"]


def parse_strategies(text: str | list[str] | tuple[str, ...], strategies_file: str | None = None) -> list[str]:
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise ThawlineError("--strategies is empty; give a comma-separated list such as head-only,full")
    for name in names:
        get_strategy(name, strategies_file)  # one clear line for an unknown name
    if len(set(names)) != len(names):
        raise ThawlineError(f"--strategies lists a strategy twice: {','.join(names)}")
    return names


def compare(
    config: TrainConfig,
    strategies: list[str] | tuple[str, ...] | str = DEFAULT_STRATEGIES,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
) -> CompareResult:
    """Train every strategy with the same config (only `strategy` differs) and write comparison.csv."""
    names = parse_strategies(strategies, config.strategies_file)
    if config.wandb:
        from thawline.tracking import wandb_module

        wandb_module()  # fail before decoding any image when --wandb cannot be honoured
    distributed.init(config.device)
    main = distributed.is_main()  # under torchrun rank 0 writes and prints; every rank trains
    quiet = quiet or not main
    out_dir = Path(distributed.broadcast_object(str(out or config.out or next_run_dir(Path("runs"), "compare"))))
    if main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ThawlineError(
                f"cannot create compare folder '{out_dir}' ({e.strerror}); pass a writable --out"
            ) from None
        save_yaml(out_dir / "compare.yaml", {"strategies": names, "config": config.to_dict()})
    probe = build_model_with_info(config.model, "none", 2)[0]
    size, interpolation, _, _ = data_settings(probe, config)
    data = prepare_data(config, size, interpolation, quiet)
    runs: dict[str, RunResult] = {}
    for name in names:
        run_dir = out_dir / name.replace("/", "_")
        done = run_dir / "summary.json"
        if resume and done.exists():
            runs[name] = RunResult(run_dir, json.loads(done.read_text()))
            if not quiet:
                print(f"[{name}] already finished in {run_dir}; skipped", flush=True)
            continue
        cfg = replace(config, strategy=name, out=str(run_dir))
        strategy = get_strategy(name, config.strategies_file)
        runs[name] = train(cfg, data=data, run_dir=run_dir, resume=resume, quiet=quiet, strategy=strategy)
    rows = ranked_rows(runs)
    if main:
        write_comparison(out_dir, rows)
    if not quiet:
        print(format_table(rows), flush=True)
    return CompareResult(out_dir, runs, rows)


def ranked_rows(runs: dict[str, RunResult]) -> list[dict[str, Any]]:
    full_time = runs["full"].summary["train_time_s"] if "full" in runs else None
    rows = []
    for name, run in runs.items():
        s = run.summary
        rows.append(
            {
                "strategy": name,
                "best_val_acc": s["best_val_acc"],
                "test_acc": s.get("test_acc"),
                "epochs": s["epochs"],
                "wall_time_s": s["wall_time_s"],
                "train_time_s": s["train_time_s"],
                "images_per_s": s["images_per_s"],
                "trainable_params": "/".join(str(n) for n in s["trainable_params"]),
                "peak_rss_mb": s["peak_rss_mb"],
                # Negative = this strategy needed less training time than full fine-tuning.
                "time_vs_full": round(s["train_time_s"] / full_time - 1, 4) if full_time else None,
                "run_dir": str(run.run_dir),
            }
        )
    rows.sort(key=lambda r: (-r["best_val_acc"], r["train_time_s"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def write_comparison(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in COLUMNS})
    atomic_write_text(out_dir / "comparison.csv", buf.getvalue())
    atomic_write_text(out_dir / "comparison.json", json.dumps(rows, indent=2))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'#':>2}  {'strategy':<14} {'val acc':>8} {'test acc':>9} {'epochs':>6} {'train s':>8} "
        f"{'img/s':>8} {'trainable params':>22} {'vs full':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        vs = "-" if r["time_vs_full"] is None else f"{r['time_vs_full']:+.0%}"
        ips = "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"
        lines.append(
            f"{r['rank']:>2}  {r['strategy']:<14} {_pct(r['best_val_acc']):>8} {_pct(r['test_acc']):>9} "
            f"{r['epochs']:>6} {r['train_time_s']:>8.1f} {ips:>8} {r['trainable_params']:>22} {vs:>8}"
        )
    return "\n".join(lines)
