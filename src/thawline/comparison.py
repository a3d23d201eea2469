"""Run several strategies on the same data, model, seed and epoch budget; rank them in one table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thawline import distributed
from thawline.config import TrainConfig, replace, save_yaml
from thawline.errors import ThawlineError
from thawline.prepare import prepare_data
from thawline.ranking import format_table, rank, row_from_summary, write_comparison
from thawline.runfolder import next_run_dir
from thawline.strategies import get_strategy
from thawline.trainer import RunResult, train

DEFAULT_STRATEGIES = ("head-only", "two-phase", "partial", "full", "scratch")


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
    data = prepare_data(config, quiet)
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
    return rank([row_from_summary(name, run.run_dir, run.summary) for name, run in runs.items()])
