"""Run several strategies on the same data, model, seed and epoch budget; rank them in one table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thawline import distributed
from thawline.config import TrainConfig, load_yaml_mapping, replace, save_yaml
from thawline.errors import ThawlineError
from thawline.prepare import PreparedData, prepare_data
from thawline.ranking import format_table, rank, row_from_summary, write_comparison
from thawline.runfolder import RunInterrupted, first_difference, mismatch_message, next_run_dir
from thawline.strategies import STRATEGIES, get_strategy
from thawline.trainer import RunResult, train
from thawline.uncertainty import Verdict, annotate, verdict_line

# Every registered strategy: a default that leaves one out can miss the winner (layer-wise and gradual won on
# small real photos where the other five were compared).
DEFAULT_STRATEGIES = tuple(STRATEGIES)


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
    if resume:
        check_compare_resume(out or config.out, config)  # before compare.yaml is rewritten
    out_dir = Path(distributed.broadcast_object(str(out or config.out or next_run_dir(Path("runs"), "compare"))))
    if main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ThawlineError(
                f"cannot create compare folder '{out_dir}' ({e.strerror}); pass a writable --out"
            ) from None
        save_yaml(out_dir / "compare.yaml", {"strategies": names, "config": config.to_dict()})
    try:
        data = prepare_data(config, quiet)
        runs = train_strategies(config, names, out_dir, data, resume=resume, quiet=quiet)
    except KeyboardInterrupt:  # Ctrl-C in any strategy: the whole comparison resumes from its folder
        raise RunInterrupted(out_dir, "compare") from None
    rows = ranked_rows(runs)
    verdict, notes = mark_uncertainty(rows, runs) if main else (None, [])
    if main:
        write_comparison(out_dir, rows)
    if not quiet:
        print(format_table(rows), flush=True)
        if lines := uncertainty_lines(verdict, notes):
            print(lines, flush=True)
    return CompareResult(out_dir, runs, rows)


def mark_uncertainty(rows: list[dict[str, Any]], runs: dict[str, RunResult]) -> tuple[Verdict | None, list[str]]:
    """Accuracy intervals and ties with the winner on the ranked rows, from the run folders' predictions."""
    return annotate(rows, {name: run.run_dir for name, run in runs.items()})


def uncertainty_lines(verdict: Verdict | None, notes: list[str]) -> str:
    """The lines after the console table: is the winner's lead significant, and what could not be computed."""
    line = verdict_line(verdict)
    return "\n".join(([line] if line else []) + [f"note: {n}" for n in notes])


def train_strategies(
    config: TrainConfig, names: list[str], out_dir: Path, data: PreparedData, *, resume: bool, quiet: bool
) -> dict[str, RunResult]:
    """Each strategy into its sub-folder of `out_dir`; on resume, a finished one trained with the same options is
    skipped and a partial one continues."""
    runs: dict[str, RunResult] = {}
    for name in names:
        run_dir = out_dir / name.replace("/", "_")
        cfg = replace(config, strategy=name, out=str(run_dir))
        finished = finished_run(run_dir, cfg, data) if resume else None
        if finished is not None:
            runs[name] = finished
            if not quiet:
                print(f"[{name}] already finished in {run_dir}; skipped", flush=True)
            continue
        strategy = get_strategy(name, config.strategies_file)
        runs[name] = train(cfg, data=data, run_dir=run_dir, resume=resume, quiet=quiet, strategy=strategy)
    return runs


def finished_run(run_dir: Path, cfg: TrainConfig, data: PreparedData) -> RunResult | None:
    """The finished run in `run_dir` (summary.json), or None; refused when its config.yaml's defining options
    differ from `cfg`'s on `data`, so a resumed comparison never ranks runs trained with other options."""
    done = run_dir / "summary.json"
    if not done.exists():
        return None
    if not (run_dir / "config.yaml").is_file():
        raise ThawlineError(f"'{run_dir}' holds a finished run without config.yaml, so its options cannot be checked; "
                            "pass a new --out")  # fmt: skip
    saved = load_yaml_mapping(str(run_dir / "config.yaml"))
    expected = {**cfg.to_dict(), "img_size": data.img_size, "classes": data.classes}
    for key in ("amp", "channels_last"):  # derived from the device when not given: whatever the run derived
        if expected[key] is None:
            del expected[key]
    diff = first_difference(saved, expected)
    if diff is not None:
        raise ThawlineError(mismatch_message(run_dir, *diff))
    return RunResult(run_dir, json.loads(done.read_text()))


def check_compare_resume(folder: str | Path | None, config: TrainConfig) -> None:
    """Resuming needs the comparison's folder, and its compare.yaml (when there) must hold the same options."""
    if not folder:
        raise ThawlineError("resuming a comparison needs its folder: pass out (CLI: --resume DIR)")
    path = Path(folder) / "compare.yaml"
    if not path.is_file():
        return
    saved = load_yaml_mapping(str(path)).get("config")
    if not isinstance(saved, dict):
        raise ThawlineError(f"'{path}' holds no config; it is not a thawline compare folder")
    new = config.to_dict()
    saved, new = ({k: v for k, v in d.items() if k != "strategy"} for d in (saved, new))  # set per strategy
    diff = first_difference(saved, new)
    if diff is not None:
        raise ThawlineError(mismatch_message(Path(folder), *diff, what="a comparison"))


def ranked_rows(runs: dict[str, RunResult]) -> list[dict[str, Any]]:
    return rank([row_from_summary(name, run.run_dir, run.summary) for name, run in runs.items()])
