"""Run several strategies on the same data, model, seed and epoch budget; rank them in one table.

Three options change how much is trained:
- `seeds=N` trains every strategy N times (seeds seed, seed+1, ...; the extra ones in `seeds/seed-<s>/`) and ranks
  by the mean best val accuracy, with the spread over seeds in the table;
- `halving=True` is successive halving: every strategy trains to a first rung (a fraction of the budget), the
  best third by best val accuracy so far continues from its checkpoint to the next rung (exactly as if it had
  never stopped), then the best ninth, ... until the last rung, the whole budget; the strategy predicted best (the
  advisor's top pick) is carried to the end whatever its early score; `halving.json` records who stopped where.
- `advise=True` runs `thawline advise` first (its prediction heads the report) and leaves out the strategies it
  ranks far behind (`advise.far_behind`); advise/skipped.json records which and why.

`models=[a, b]` is a model x strategy grid: each model trains every strategy into `OUT/<model>/<strategy>` (its
data decoded at its own input size) and one table ranks every (model, strategy) pair, named "a / partial".
`shift_test=DIR` (a tree of `thawline data shift`) evaluates each ranked run's best weights on every shifted set:
the run folder gets shift.json ({set: accuracy}) and its summary.json the table's `shifted_acc` and `shift_gap`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thawline.comparing.advise import advise as run_advice
from thawline.core.atomic import write_text_atomic
from thawline.core.config import TrainConfig, load_yaml_mapping, replace, save_yaml
from thawline.core.errors import ThawlineError
from thawline.data import fingerprint
from thawline.data.files import RUN_MARKER
from thawline.data.names import folder_name
from thawline.data.shift import read_shift, shift_sets, shift_summary
from thawline.deploy.evaluate import evaluate_folders
from thawline.models.weights import check_model_name
from thawline.report.advice import ADVICE_DIR, SKIPPED_JSON, load_advice
from thawline.report.advice_rules import PRIOR, far_behind
from thawline.report.ranking import (
    format_table,
    grid_name,
    model_folder,
    rank,
    row_from_summary,
    run_subdir,
    write_comparison,
)
from thawline.report.uncertainty import Verdict, annotate, seed_spread, verdict_line
from thawline.training import distributed
from thawline.training.prepare import PreparedData, discover_folder, prepare_data
from thawline.training.run_state import RunResult
from thawline.training.runfolder import (
    RUNS_PARENT,
    RunInterrupted,
    check_clearable,
    check_fresh_folder,
    claim_folder,
    first_difference,
    mismatch_message,
    next_run_dir,
)
from thawline.training.strategies import STRATEGIES, check_budget, get_strategy
from thawline.training.tracking import wandb_module
from thawline.training.trainer import train

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
    folders: dict[str, str] = {}
    for name in names:  # each strategy's run folder is its name made safe (partial-2/3 -> partial-2_3)
        if (other := folders.setdefault(folder_name(name), name)) != name:
            raise ThawlineError(f"--strategies: '{other}' and '{name}' would share the run folder "
                                f"'{folder_name(name)}'; rename one in the strategies file")  # fmt: skip
    return names


def parse_models(text: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """`--models a,b`: the grid's model names (checked against timm before anything trains); [] when not given
    (a compare.yaml of a one-model comparison records [])."""
    if text is None or (not isinstance(text, str) and not text):
        return []
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise ThawlineError("--models is empty; give a comma-separated list such as tf_efficientnet_lite0,resnet50")
    if len(set(names)) != len(names):
        raise ThawlineError(f"--models lists a model twice: {','.join(names)}")

    for name in names:
        check_model_name(name)  # one clear line for an unknown name
    folders = [model_folder(n) for n in names]
    if len(set(folders)) != len(folders):
        raise ThawlineError(f"--models {','.join(names)}: two names share a folder name; list each model once")
    return names


def compare(
    config: TrainConfig,
    strategies: list[str] | tuple[str, ...] | str = DEFAULT_STRATEGIES,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
    seeds: int = 1,
    halving: bool = False,
    advise: bool = False,
    models: str | list[str] | tuple[str, ...] | None = None,
    shift_test: str | Path | None = None,
    overwrite: bool = False,
) -> CompareResult:
    """Train every strategy with the same config (only `strategy` differs) and write comparison.csv; with `models`,
    every strategy on every model; with `shift_test`, each run's accuracy on the shifted sets too. A fresh comparison
    into a folder that holds one is refused unless `overwrite`; the folder is locked while this process writes it."""
    names = parse_strategies(strategies, config.strategies_file)
    grid = parse_models(models)
    if len(grid) == 1:  # one model is no grid: the plain layout, as with --model
        config, grid = replace(config, model=grid[0]), []
    if seeds < 1:
        raise ThawlineError(f"--seeds {seeds}: must be 1 or more")
    if halving and seeds > 1:
        raise ThawlineError("--halving and --seeds N do not combine yet; use one of them")
    for flag, on in (("--halving", halving), ("--advise", advise)):
        if grid and on:
            raise ThawlineError(f"--models and {flag} do not combine yet; use one of them")
    shift_dir = Path(shift_test) if shift_test else None
    if shift_dir is not None:
        shift_sets(shift_dir)  # one line before anything is written; its classes are checked once data is read
    if config.wandb:

        wandb_module()  # fail before decoding any image when --wandb cannot be honoured
    for name in names:  # every strategy's budget before any is trained
        check_budget(get_strategy(name, config.strategies_file), config.epochs)
    distributed.init(config.device)
    main = distributed.is_main()  # under torchrun rank 0 writes and prints; every rank trains
    quiet = quiet or not main
    folder = out or config.out
    if resume:
        check_compare_resume(folder, config)  # before compare.yaml is rewritten
    elif folder and not overwrite:
        check_fresh_folder(Path(folder), "compare")
    elif folder:
        check_clearable(Path(folder))  # before any decoding: --overwrite empties only what thawline wrote
    out_dir = Path(distributed.broadcast_object(str(folder or next_run_dir(RUNS_PARENT, "compare", create=main))))
    with claim_folder(out_dir, resume=resume, overwrite=overwrite, main=main, kind="compare"):  # until the table
        if main and not resume and not overwrite:
            check_fresh_folder(out_dir, "compare")  # again, now that it is ours
        if main:
            if not resume or not (out_dir / "compare.yaml").is_file():  # a start (a resume of nothing is one too)
                # data.csv before compare.yaml: a compare.yaml alone is a folder older than data.csv, not checked
                fingerprint.write(out_dir, fingerprint.of_discovered(discover_folder(config)))
            plan = {"strategies": names, "config": config.to_dict(), "seeds": seeds, "halving": halving,
                    "advise": advise, "models": grid, "shift_test": str(shift_dir) if shift_dir else None}  # fmt: skip
            save_yaml(out_dir / "compare.yaml", plan)
        options = {"resume": resume, "quiet": quiet, "seeds": seeds, "halving": halving, "advise": advise}
        try:
            runs = train_grid(config, names, grid, out_dir, shift_dir, options)
        except KeyboardInterrupt:  # Ctrl-C in any strategy: the whole comparison resumes from its folder
            raise RunInterrupted(out_dir, "compare") from None
        except ThawlineError:
            if main and not resume:
                forget_unstarted(out_dir)  # refused before any run began (bad data): the same command may run again
            raise
        rows = ranked_rows(runs, out_dir)
        verdict, notes = mark_uncertainty(rows, runs) if main else (None, [])
        if main:
            write_comparison(out_dir, rows)
    if not quiet:
        print(format_table(rows), flush=True)
        if lines := uncertainty_lines(verdict, notes):
            print(lines, flush=True)
        if rows and all(r.get("test_acc") is None for r in rows):
            print(f"note: {NO_TEST_NOTE}", flush=True)
        for folder in [out_dir, *(out_dir / model_folder(m) for m in grid)] if halving else []:
            if line := halving_stopped_line(folder):
                print(line, flush=True)
    return CompareResult(out_dir, runs, rows)


def halving_stopped_line(folder: Path) -> str | None:
    """The strategies `--halving` stopped early, which the ranked table leaves out: 'stopped early by --halving
    (not ranked): two-phase after epoch 1 (val 74.0%), ...', from the folder's halving.json."""
    try:
        stopped = json.loads((folder / "halving.json").read_text()).get("stopped") or {}
    except (OSError, ValueError):
        return None
    if not stopped:
        return None
    by_epoch = sorted(stopped.items(), key=lambda kv: (kv[1]["epoch"], -kv[1]["val_acc"]))
    parts = [f"{name} after epoch {s['epoch']} (val {s['val_acc']:.1%})" for name, s in by_epoch]
    return "stopped early by --halving (not ranked): " + ", ".join(parts)


def train_grid(
    config: TrainConfig, names: list[str], grid: list[str], out_dir: Path, shift_dir: Path | None, options: dict
) -> dict[str, RunResult]:
    """Every strategy (on every model of a grid), then each run on the shifted sets when asked."""
    if grid:
        runs = {}
        for model in grid:
            trained = train_model(replace(config, model=model), names, out_dir, model_folder(model),
                                  shift_dir=shift_dir, **options)  # fmt: skip
            runs.update({grid_name(model, name): run for name, run in trained.items()})
    else:
        runs = train_model(config, names, out_dir, "", shift_dir=shift_dir, **options)
    if shift_dir is not None and distributed.is_main():
        sets = shift_sets(shift_dir)
        for name, run in runs.items():
            shift_test_run(name, run, sets, shift_dir, config, quiet=options["quiet"])
    return runs


def forget_unstarted(folder: Path) -> None:
    """Remove compare.yaml and data.csv when no run of the comparison has begun (no marked run folder below it): a
    comparison refused before training, for leakage say, must not leave a folder that the same command then calls a
    comparison to resume."""
    if not any(p.parent != folder and p.name == RUN_MARKER for p in folder.rglob(RUN_MARKER)):
        for name in ("compare.yaml", fingerprint.DATA_FILE):
            (folder / name).unlink(missing_ok=True)


def train_model(
    config: TrainConfig,
    names: list[str],
    out_dir: Path,
    sub: str,
    *,
    resume: bool,
    quiet: bool,
    seeds: int,
    halving: bool,
    advise: bool,
    shift_dir: Path | None,
) -> dict[str, RunResult]:
    """Every strategy on `config.model` into `out_dir/sub` (sub: "" for one model, its folder in a grid), the extra
    seeds into `out_dir/seeds/seed-<s>/sub`; the data decoded once for them all."""
    data = prepare_data(config, quiet)
    if shift_dir is not None:
        shift_sets(shift_dir, data.classes)  # before any training: the shifted sets must hold the same classes
    folder = out_dir / sub
    if advise and distributed.is_main() and not (resume and (folder / ADVICE_DIR / "advise.json").is_file()):

        run_advice(config, folder / ADVICE_DIR, data=data, quiet=quiet)  # seconds; the report's first section
    entrants = len(names)
    if advise:
        names = skip_far_behind(names, folder, quiet=quiet)
    if halving:
        runs = successive_halving(config, names, folder, data, resume=resume, quiet=quiet, entrants=entrants)
    else:
        runs = train_strategies(config, names, folder, data, resume=resume, quiet=quiet)
    for extra in range(1, seeds):
        seed = config.seed + extra
        train_strategies(replace(config, seed=seed), names, out_dir / "seeds" / f"seed-{seed}" / sub, data,
                         resume=resume, quiet=quiet)  # fmt: skip
    return runs


def skip_far_behind(names: list[str], folder: Path, *, quiet: bool) -> list[str]:
    """`--advise`: `names` without the strategies the advisor ranks far behind (`advise.far_behind`);
    advise/skipped.json and the report say which and why. Rank 0 decides (it ran the advisor); every rank trains
    the same list."""
    skipped: dict[str, str] = {}
    if distributed.is_main():
        doc = load_advice(folder / ADVICE_DIR)
        skipped = far_behind(doc["ranking"], names) if doc else {}
        write_text_atomic(folder / ADVICE_DIR / SKIPPED_JSON, json.dumps(skipped, indent=2))
    skipped = distributed.broadcast_object(skipped)
    if not quiet:
        for name, why in skipped.items():
            print(f"[advise] {name} skipped: {why}", flush=True)
    return [n for n in names if n not in skipped]


def shift_test_run(
    name: str, run: RunResult, sets: dict[str, Path], shift_dir: Path, config: TrainConfig, *, quiet: bool
) -> None:
    """The run's best weights on every shifted set: shift.json ({set: accuracy}) in its folder, and the table's
    `shifted_acc`/`shift_gap` in its summary.json. A resumed comparison reuses a shift.json of the same sets."""
    if run.summary is None:
        return
    source = str(shift_dir.resolve())
    done = read_shift(run.run_dir)
    if done is None or list(done) != list(sets) or run.summary.get("shift_test") != source:

        evaluations = evaluate_folders(
            run.run_dir, sets, batch_size=max(64, config.batch_size), device=config.device, workers=config.workers,
            cache_dir=config.cache_dir,
        )  # fmt: skip
        done = {s: round(ev.accuracy, 6) for s, ev in evaluations.items()}
        write_text_atomic(run.run_dir / "shift.json", json.dumps(done, indent=2))
    run.summary.update(shift_summary(done, run.summary.get("test_acc")), shift_test=source)
    write_text_atomic(run.run_dir / "summary.json", json.dumps(run.summary, indent=2))
    if not quiet:
        gap = run.summary.get("shift_gap")
        gap_text = f", shift gap {gap * 100:+.1f} pts (test − shifted)" if gap is not None else ""
        print(f"[{name}] shifted acc {run.summary['shifted_acc']:.2%} over {len(done)} sets{gap_text}", flush=True)


# A ranking with no test split is read on the images each run's best epoch was chosen on.
NO_TEST_NOTE = (
    "the data has no test split: the accuracies are on val, where each run's best epoch was chosen, so they read "
    "high; hold out a test set with --test-split 0.2 (or add test/)"
)


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
        run_dir = out_dir / folder_name(name)
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


# The schedule's reduction factor (Hyperband's, Li et al. 2017): the rungs divide the budget by 3 per round and the
# i-th rung keeps the best n / 3^i of the n strategies (7: 3, then 1). Replayed on the 13-task suite
# (benchmarks/advise_suite.py) it named the full compare's pick on every task; keeping the better half at epochs
# 2, 4, 8 named it on 10 of 13 in more time.
HALVING_ETA = 3


def halving_rungs(budget: int, n_strategies: int) -> list[int]:
    """The epochs at which strategies are compared: the budget divided by HALVING_ETA once per round until one
    would remain, the last rung the whole budget (e.g. 7 strategies, 8 epochs: 1, 3, 8). On a short budget a rung
    that would fall on or before the previous one moves to the next epoch (7 strategies, 4 epochs: 1, 2, 4, not
    1, 4: merged, the first rung's three survivors and the carried one all ran the last three epochs, 71% of the
    full compare's time on the suite's 4-epoch task); rounds that find no epoch left before the budget are dropped."""
    rounds = max(1, math.ceil(math.log(max(n_strategies, 2)) / math.log(HALVING_ETA) - 1e-9))
    rungs: list[int] = []
    for i in range(rounds):
        epoch = max(round(budget / HALVING_ETA ** (rounds - i)), rungs[-1] + 1 if rungs else 1)
        if epoch >= budget:
            break
        rungs.append(epoch)
    return [*rungs, budget]


def halving_keep(n_strategies: int, rung: int) -> int:
    """How many of `n_strategies` continue past the `rung`-th rung (1, 2, ...) on their score: n / 3^rung rounded
    up, at least one (7 strategies: 3, then 1). The carried strategy comes on top of these, so it never makes the
    schedule's later rungs keep more (counting it in the third had 7 -> 4 -> 3 reach the end on 3 suite tasks)."""
    return max(1, math.ceil(n_strategies / HALVING_ETA**rung))


def halving_survivors(scores: dict[str, float], carried: str | None, keep: int) -> list[str]:
    """Who continues past a rung, best first: the `keep` best of `scores` (each strategy's best val accuracy so far;
    ties keep the given order), and `carried` whatever its score. Halving judges every strategy at the same epoch,
    which is unfair to a schedule that thaws late (gradual lost 7 and 15 points on the suite when stopped early), so
    the strategy predicted best is carried to the end instead of being judged on its first phases."""
    kept = sorted(scores, key=lambda n: -scores[n])[:keep]  # stable
    return kept + [carried] if carried in scores and carried not in kept else kept


def halving_carried(names: list[str], folder: Path) -> str:
    """The strategy halving never stops: the advisor's top pick among `names` when `--advise` ran into `folder`,
    else the first of `names` in the advisor's prior (the order that fits the task suite best; no pass needed)."""
    doc = load_advice(folder / ADVICE_DIR)
    order = [r["strategy"] for r in doc["ranking"]] if doc else sorted(PRIOR, key=lambda n: -PRIOR[n])
    return next((n for n in order if n in names), names[0])


def successive_halving(
    config: TrainConfig,
    names: list[str],
    out_dir: Path,
    data: PreparedData,
    *,
    resume: bool,
    quiet: bool,
    entrants: int | None = None,
) -> dict[str, RunResult]:
    """Successive halving across strategies; returns the runs that reached the whole budget. `entrants`: how many
    strategies the race started with, when `--advise` left some out before any training (a rung zero): the rungs
    and the counts kept follow from it, so leaving out a strategy that would have lost at the first rung changes
    nothing else."""
    if config.epochs is None:
        raise ThawlineError("--halving needs an epoch budget: pass --epochs N")
    entrants = max(entrants or 0, len(names))
    log_path = out_dir / "halving.json"
    state = json.loads(log_path.read_text()) if resume and log_path.is_file() else {}
    rungs = state.get("rungs") or halving_rungs(config.epochs, entrants)  # a resumed race keeps its schedule
    if len(rungs) == 1 and not quiet and not state:
        print(f"[halving] --epochs {config.epochs} leaves no earlier epoch to compare at: every strategy trains the "
              "whole budget (halving needs 2 or more)", flush=True)  # fmt: skip
    carried = state.get("carried") or halving_carried(names, out_dir)
    alive = list(state.get("alive", names))
    stopped: dict[str, dict[str, Any]] = dict(state.get("stopped", {}))
    scores: dict[str, dict[str, float]] = dict(state.get("scores", {}))
    runs: dict[str, RunResult] = {}
    for i, rung in enumerate(rungs):
        if str(rung) in state.get("done_rungs", []):
            continue
        for name in alive:
            run_dir = out_dir / folder_name(name)
            cfg = replace(config, strategy=name, out=str(run_dir))
            started = (run_dir / "last.pt").is_file() or (run_dir / "summary.json").is_file()
            strategy = get_strategy(name, config.strategies_file)
            result = train(cfg, data=data, run_dir=run_dir, resume=started, quiet=quiet, strategy=strategy,
                           stop_after_epoch=rung)  # fmt: skip
            best = max((r["val_acc"] for r in result.metrics), default=0.0)
            scores.setdefault(name, {})[str(rung)] = best
            if result.summary is not None:
                runs[name] = result
        if i + 1 < len(rungs):
            survivors = halving_survivors(
                {n: scores[n][str(rung)] for n in alive}, carried, halving_keep(entrants, i + 1)
            )
            for name in (n for n in alive if n not in survivors):
                stopped[name] = {"epoch": rung, "val_acc": scores[name][str(rung)], "rung": i + 1}
                if not quiet:
                    print(f"[halving] {name} stops after epoch {rung} "
                          f"(best val acc {scores[name][str(rung)]:.2%})", flush=True)  # fmt: skip
            alive = survivors
        state = {"rungs": rungs, "entrants": entrants, "carried": carried, "alive": alive, "stopped": stopped,
                 "scores": scores, "done_rungs": [*state.get("done_rungs", []), str(rung)]}  # fmt: skip
        if distributed.is_main():
            write_text_atomic(log_path, json.dumps(state, indent=2))
    for name in alive:  # a resumed comparison whose last rung was done before
        if name not in runs:
            runs[name] = RunResult(
                out_dir / folder_name(name),
                json.loads((out_dir / folder_name(name) / "summary.json").read_text()),
            )
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
    fingerprint.check_same_data(run_dir, data.fingerprint)  # nothing trained on other data is ranked
    return RunResult(run_dir, json.loads(done.read_text()))


def check_compare_resume(folder: str | Path | None, config: TrainConfig) -> None:
    """Resuming needs the comparison's folder, and its compare.yaml (when there) must hold the same options, its
    data.csv (when there) list the same files as the data folder holds now."""
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
    if (Path(folder) / fingerprint.DATA_FILE).is_file():  # before any strategy continues on changed data
        now = fingerprint.of_discovered(discover_folder(config))
        fingerprint.check_same_data(Path(folder), now, subject=f"'{folder}' holds a comparison started")


def ranked_rows(runs: dict[str, RunResult], out_dir: Path | None = None) -> list[dict[str, Any]]:
    """The finished runs' rows, ranked; with `out_dir`, the spread over the seeds trained in its seeds/ folder."""
    rows = [row_from_summary(name, run.run_dir, run.summary) for name, run in runs.items() if run.summary]
    if out_dir is not None:
        seed_spread(rows, out_dir, folder_of=run_subdir)
    return rank(rows)
