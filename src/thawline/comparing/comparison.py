"""Run several strategies on the same data, model, seed and epoch budget; rank them in one table.

A comparison is trials -> scheduler -> executor -> answer: its `CompareOptions` give the trials (`trials.py`: a
strategy, on a model of a grid, with a seed; each its own run folder), a scheduler decides which run and how far
(`schedulers.py`: `AllTrials`, or `Halving`), an executor trains each request (`executor.py`: in this process, on
the data decoded once per model) and the answer (the ranking, its ties, the report) reads the run folders.

Three options change how much is trained:
- `seeds=N` trains every strategy N times (seeds seed, seed+1, ...; the extra ones in `seeds/seed-<s>/`) and ranks
  by the mean best val accuracy, with the spread over seeds in the table;
- `halving=True` is successive halving: every strategy trains to a first rung (a fraction of the budget), the
  best third by best val accuracy so far (its mean over the seeds with `seeds=N`) continues from its checkpoint to
  the next rung (exactly as if it had never stopped), then the best ninth, ... until the last rung, the whole
  budget; the strategy predicted best (the advisor's top pick) is carried to the end whatever its early score;
  `halving.json` records who stopped where.
- `advise=True` runs `thawline advise` first (its prediction heads the report) and leaves out the strategies it
  ranks far behind (`advise.far_behind`); advise/skipped.json records which and why.

`models=[a, b]` is a model x strategy grid: each model trains every strategy into `OUT/<model>/<strategy>` (its
data decoded at its own input size) and one table ranks every (model, strategy) pair, named "a / partial"; with
`halving` each model runs its own race (`OUT/<model>/halving.json`), with `advise` its own advisor's pass
(`OUT/<model>/advise/`).
`shift_test=DIR` (a tree of `thawline data shift`) evaluates each ranked run's best weights on every shifted set:
the run folder gets shift.json ({set: accuracy}) and its summary.json the table's `shifted_acc` and `shift_gap`.
`jobs=N` trains N trials of each batch (all of them, a halving rung, a fold) at once in worker processes
(`pool.py`), `ray=ADDRESS` as tasks on a Ray cluster (`ray_executor.py`); the runs are those of `jobs=1`, which
trains them one after another in this process. A trial whose worker keeps dying is reported failed and the others
are ranked (`retries.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from dataclasses import replace as with_options
from pathlib import Path
from typing import Any

from thawline.comparing.advise import advise as run_advice
from thawline.comparing.crossval import (
    FoldSchedule,
    answer_of,
    crossval_rows,
    members,
    pick_of,
    verdict_lines,
    write_folds_csv,
    write_oof,
)
from thawline.comparing.dryrun import compare_progress
from thawline.comparing.executor import Executor, InProcessExecutor
from thawline.comparing.options import (
    DEFAULT_STRATEGIES,
    CompareOptions,
    Names,
    check_options,
    parse_models,
    parse_strategies,
)
from thawline.comparing.pool import LocalPoolExecutor, WorkerSpec
from thawline.comparing.progress import Progress
from thawline.comparing.ray_executor import RayExecutor
from thawline.comparing.refit import refit, refit_line
from thawline.comparing.schedulers import (
    AllTrials,
    Halving,
    Scheduler,
    halving_carried,
    halving_stopped_line,
    run_schedule,
)
from thawline.comparing.trials import Request, Trial, make_trials, model_dir, trial_folder
from thawline.core.atomic import write_text_atomic
from thawline.core.config import TrainConfig, load_yaml_mapping, replace, save_yaml
from thawline.core.errors import ThawlineError
from thawline.core.runformat import (
    COMPARE_PLAN,
    CONFIG,
    HALVING_JSON,
    PLAN,
    RACE_JSON,
    ROW,
    RUN_MARKER,
    SHIFT_JSON,
    SUMMARY,
    SUMMARY_FILE,
)
from thawline.data import fingerprint
from thawline.data.shift import read_shift, shift_sets, shift_summary
from thawline.deploy.evaluate import evaluate_folders
from thawline.report.advice import ADVICE_DIR, SKIPPED_JSON, load_advice
from thawline.report.advice_rules import far_behind
from thawline.report.ranking import format_table, model_folder, rank, row_from_summary, run_subdir, write_comparison
from thawline.report.uncertainty import Verdict, annotate, seed_spread, verdict_line
from thawline.training import distributed
from thawline.training.folds import prepare_folds
from thawline.training.prepare import discover_folder, prepare_data
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
from thawline.training.tracking import wandb_module

__all__ = ["DEFAULT_STRATEGIES", "CompareOptions", "CompareResult", "compare", "parse_models", "parse_strategies",
           "run_comparison"]  # fmt: skip


@dataclass
class CompareResult:
    out_dir: Path
    runs: dict[str, RunResult]
    rows: list[dict[str, Any]]
    answer: dict[str, Any] | None = None  # compare --folds: the delivered answer (comparison.json's `answer`)
    failed: list[str] = field(default_factory=list)  # the lines of the trials given up on (not ranked)

    @property
    def winner(self) -> str:
        """The strategy answered: rank 1; with folds the pick (the cheapest of those tied with rank 1)."""
        return self.answer["single"]["strategy"] if self.answer else self.rows[0][ROW.strategy]


def compare(
    config: TrainConfig, strategies: Names = DEFAULT_STRATEGIES, out: str | Path | None = None, **options: Any
) -> CompareResult:
    """`run_comparison` with its `CompareOptions` given as keyword arguments (the CLI's and the API's form): every
    field of `CompareOptions` (where each option is declared and documented) but `strategies` and `out`."""
    return run_comparison(config, CompareOptions.of(strategies, out, **options))


def run_comparison(config: TrainConfig, options: CompareOptions) -> CompareResult:
    """Train every strategy with the same config (only `strategy` differs) and write comparison.csv; with `models`,
    every strategy on every model; with `shift_test`, each run's accuracy on the shifted sets too. A fresh comparison
    into a folder that holds one is refused unless `overwrite`; the folder is locked while this process writes it."""
    names, grid = check_options(config, options)
    if len(grid) == 1:  # one model is no grid: the plain layout, as with --model
        config, grid = replace(config, model=grid[0]), []
    if config.wandb:

        wandb_module()  # fail before decoding any image when --wandb cannot be honoured
    distributed.init(config.device)
    main = distributed.is_main()  # under torchrun rank 0 writes and prints; every rank trains
    options = with_options(options, quiet=options.quiet or not main)
    resume, overwrite, quiet = options.resume, options.overwrite, options.quiet
    folder = options.out or config.out
    if resume:
        check_compare_resume(folder, config, options)  # before compare.yaml is rewritten
    elif folder and not overwrite:
        check_fresh_folder(Path(folder), "compare")
    elif folder:
        check_clearable(Path(folder))  # before any decoding: --overwrite empties only what thawline wrote
    out_dir = Path(distributed.broadcast_object(str(folder or next_run_dir(RUNS_PARENT, "compare", create=main))))
    with claim_folder(out_dir, resume=resume, overwrite=overwrite, main=main, kind="compare"):  # until the table
        if main and not resume and not overwrite:
            check_fresh_folder(out_dir, "compare")  # again, now that it is ours
        if main:
            if not resume or not (out_dir / COMPARE_PLAN).is_file():  # a start (a resume of nothing is one too)
                # data.csv before compare.yaml: a compare.yaml alone is a folder older than data.csv, not checked
                fingerprint.write(out_dir, fingerprint.of_discovered(discover_folder(config)))
            shift_dir = options.shift_test
            plan = {PLAN.strategies: names, PLAN.config: config.to_dict(), PLAN.seeds: options.seeds,
                    PLAN.halving: options.halving, PLAN.advise: options.advise, PLAN.models: grid,
                    PLAN.shift_test: str(shift_dir) if shift_dir else None, PLAN.folds: options.folds,
                    PLAN.race: options.race}  # fmt: skip
            save_yaml(out_dir / COMPARE_PLAN, plan)
        crossval: CrossValidated | None = None
        failed: list[str] = []
        try:
            progress = compare_progress(config, options)  # None when quiet (every rank but the first is)
            if options.folds:
                crossval = cross_validate(config, names, out_dir, options, progress)
                runs = crossval.runs
            else:
                runs = train_grid(config, names, grid, out_dir, options, failed, progress)
        except KeyboardInterrupt:  # Ctrl-C in any strategy: the whole comparison resumes from its folder
            raise RunInterrupted(out_dir, "compare") from None
        except ThawlineError:
            if main and not resume:
                forget_unstarted(out_dir)  # refused before any run began (bad data): the same command may run again
            raise
        if crossval is not None:
            rows, verdict, notes = crossval.rows, None, []
        else:
            rows = ranked_rows(runs, out_dir)
            verdict, notes = mark_uncertainty(rows, runs) if main else (None, [])
        if main:
            write_comparison(out_dir, rows, crossval.document if crossval else None)
    if not quiet:
        print(format_table(rows), flush=True)
        if lines := uncertainty_lines(verdict, notes) if crossval is None else "\n".join(crossval.lines):
            print(lines, flush=True)
        if rows and all(r.get(ROW.test_acc) is None for r in rows):
            print(f"note: {NO_TEST_NOTE}", flush=True)
        for folder in [out_dir, *(out_dir / model_folder(m) for m in grid)] if options.halving else []:
            if line := halving_stopped_line(folder):
                print(line, flush=True)
        for line in failed:
            print(line, flush=True)
    return CompareResult(out_dir, runs, rows, crossval.answer if crossval else None, failed)


@dataclass
class CrossValidated:
    runs: dict[str, RunResult]  # each finalist's first fold run
    rows: list[dict[str, Any]]
    answer: dict[str, Any]
    document: dict[str, Any]  # comparison.json's entries besides the rows
    lines: list[str]  # the console lines after the table


def cross_validate(
    config: TrainConfig, names: list[str], out_dir: Path, options: CompareOptions, progress: Progress | None = None
) -> CrossValidated:
    """`--folds K [--race]` (crossval.py): the pool decoded once and cut into folds (folds.csv), the advisor's pass
    on the first fold when asked, every strategy trained fold by fold (the race stopping some), then the ranking by
    out-of-fold accuracy, the tests against the winner and the delivered answer (oof.npz, race.json)."""
    assert options.folds is not None
    folded = prepare_folds(config, options.folds, options.quiet)
    main = distributed.is_main()
    if main:
        write_folds_csv(out_dir, folded)
    if options.advise and main and not (options.resume and (out_dir / ADVICE_DIR / "advise.json").is_file()):
        run_advice(config, out_dir / ADVICE_DIR, data=folded.fold(0), quiet=options.quiet)
    if options.advise:
        names = skip_far_behind(names, out_dir, quiet=options.quiet)
    schedule = FoldSchedule(names, options.folds, config.seed, race=options.race,
                            log=out_dir / RACE_JSON if main else None, quiet=options.quiet)  # fmt: skip
    executor = make_executor(config, out_dir, options, lambda: InProcessExecutor(
        config, folded.pool, out_dir, resume=options.resume, quiet=options.quiet, fold_data=folded.fold
    ), folds=options.folds)  # fmt: skip
    with executor:
        results = run_schedule(schedule, executor, progress)
    mem = members(folded, schedule, results)
    labels = folded.pool.splits["train"].labels
    test = folded.pool.splits.get("test")
    test_labels = test.labels if test is not None else None
    rows = crossval_rows(mem, labels, test_labels, options.folds, out_dir)
    answer = answer_of(mem, labels, test_labels, options.folds, pick_of(rows, mem))
    if main:
        write_oof(out_dir, folded, mem, answer)
    document = {"folds": options.folds, "race": schedule.state(options.folds), "answer": answer}
    lines = verdict_lines(rows, answer, schedule.stopped)
    if options.refit:
        best = answer["single"]["strategy"]
        document["refit"] = refit(config, best, mem[best].runs, folded.pool, out_dir, resume=options.resume,
                                  quiet=options.quiet)  # fmt: skip
        lines.append(refit_line(document["refit"]))
    runs = {name: m.runs[0] for name, m in mem.items()}
    return CrossValidated(runs, rows, answer, document, lines)


def train_grid(
    config: TrainConfig,
    names: list[str],
    grid: list[str],
    out_dir: Path,
    options: CompareOptions,
    failed: list[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, RunResult]:
    """Every strategy (on every model of a grid), then each ranked run on the shifted sets when asked; the lines of
    the trials given up on go to `failed`."""
    runs: dict[str, RunResult] = {}
    for model in grid or [None]:
        model_config = replace(config, model=model) if model else config
        runs.update(train_model(model_config, names, model, out_dir, options, failed, progress))
    if options.shift_test is not None and distributed.is_main():
        sets = shift_sets(options.shift_test)
        for name, run in runs.items():
            shift_test_run(name, run, sets, options.shift_test, config, quiet=options.quiet)
    return runs


def train_model(
    config: TrainConfig,
    names: list[str],
    model: str | None,
    out_dir: Path,
    options: CompareOptions,
    failed: list[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, RunResult]:
    """One model's trials (`model`: its name in a grid, None outside one) on its data decoded once: the advisor's
    pass first when asked (it may leave strategies out), then its scheduler's requests, run in this process (or
    `jobs` at a time in worker processes, or on Ray). The ranked runs: the first seed's that reached the whole
    budget, by row name (a trial given up on is not one: its line goes to `failed`)."""
    quiet = options.quiet
    data = prepare_data(config, quiet)
    if options.shift_test is not None:
        shift_sets(options.shift_test, data.classes)  # before any training: the shifted sets hold the same classes
    folder = model_dir(out_dir, model)
    if options.advise and distributed.is_main() and not (
        options.resume and (folder / ADVICE_DIR / "advise.json").is_file()
    ):
        run_advice(config, folder / ADVICE_DIR, data=data, quiet=quiet)  # seconds; the report's first section
    entrants = len(names)
    if options.advise:
        names = skip_far_behind(names, folder, quiet=quiet)
    trials = make_trials(names, model, config.seed, options.seeds)
    scheduler = halving(trials, config, folder, entrants, options) if options.halving else AllTrials(trials)
    executor = make_executor(config, out_dir, options,
                             lambda: InProcessExecutor(config, data, out_dir, resume=options.resume, quiet=quiet))
    with executor:
        results = run_schedule(scheduler, executor, progress)
    if failed is not None:
        failed.extend(getattr(executor, "failed", {}).values())
    return ranked_runs(scheduler, results, out_dir, config.seed)


def make_executor(
    config: TrainConfig, out_dir: Path, options: CompareOptions, in_process: Callable[[], Executor],
    folds: int | None = None,
) -> Executor:
    """Who trains a schedule's requests: Ray tasks (`ray`), `jobs` worker processes (which, like the tasks on this
    machine, read the data from the disk cache prepare_data filled), or this process (`in_process()`)."""
    spec = WorkerSpec(config, out_dir, options.resume, options.quiet, folds=folds)
    if options.ray is not None:
        return RayExecutor(spec, address=options.ray or None, gpus_per_trial=options.gpus_per_trial,
                           cpus_per_trial=options.cpus_per_trial, retries=options.retries)  # fmt: skip
    if options.jobs > 1:
        return LocalPoolExecutor(spec, options.jobs, trials_per_gpu=options.trials_per_gpu, retries=options.retries)
    return in_process()


def halving(trials: list[Trial], config: TrainConfig, folder: Path, entrants: int, options: CompareOptions) -> Halving:
    """The race of one model's trials in `folder`: its halving.json continued on resume, the strategy carried to
    the end the advisor's pick (or the prior's)."""
    assert config.epochs is not None  # check_options refused --halving without --epochs
    log = folder / HALVING_JSON
    state = json.loads(log.read_text()) if options.resume and log.is_file() else None
    carried = halving_carried(list(dict.fromkeys(t.strategy for t in trials)), folder)
    return Halving(trials, config.epochs, carried, entrants=entrants, state=state,
                   log=log if distributed.is_main() else None, quiet=options.quiet)  # fmt: skip


def ranked_runs(
    scheduler: Scheduler, results: Mapping[Request, RunResult], out_dir: Path, first_seed: int
) -> dict[str, RunResult]:
    """The scheduler's finalists of the first seed (the others' spread is read from their folders), each from this
    session's result, or from its folder when it finished before a resume."""
    latest = {request.trial: result for request, result in results.items()}
    runs: dict[str, RunResult] = {}
    for trial in scheduler.finalists:
        if trial.seed != first_seed:
            continue
        run = latest.get(trial)
        if run is None or run.summary is None:
            run_dir = trial_folder(out_dir, trial, first_seed)
            run = RunResult(run_dir, json.loads((run_dir / SUMMARY_FILE).read_text()))
        runs[trial.name] = run
    return runs


def forget_unstarted(folder: Path) -> None:
    """Remove compare.yaml and data.csv when no run of the comparison has begun (no marked run folder below it): a
    comparison refused before training, for leakage say, must not leave a folder that the same command then calls a
    comparison to resume."""
    if not any(p.parent != folder and p.name == RUN_MARKER for p in folder.rglob(RUN_MARKER)):
        for name in (COMPARE_PLAN, fingerprint.DATA_FILE):
            (folder / name).unlink(missing_ok=True)


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
    if done is None or list(done) != list(sets) or run.summary.get(SUMMARY.shift_test) != source:

        evaluations = evaluate_folders(
            run.run_dir, sets, batch_size=max(64, config.batch_size), device=config.device, workers=config.workers,
            cache_dir=config.cache_dir,
        )  # fmt: skip
        done = {s: round(ev.accuracy, 6) for s, ev in evaluations.items()}
        write_text_atomic(run.run_dir / SHIFT_JSON, json.dumps(done, indent=2))
    run.summary.update({**shift_summary(done, run.summary.get(SUMMARY.test_acc)), SUMMARY.shift_test: source})
    write_text_atomic(run.run_dir / SUMMARY_FILE, json.dumps(run.summary, indent=2))
    if not quiet:
        gap = run.summary.get(SUMMARY.shift_gap)
        gap_text = f", shift gap {gap * 100:+.1f} pts (test − shifted)" if gap is not None else ""
        print(
            f"[{name}] shifted acc {run.summary[SUMMARY.shifted_acc]:.2%} over {len(done)} sets{gap_text}", flush=True
        )


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


def check_compare_resume(
    folder: str | Path | None, config: TrainConfig, options: CompareOptions | None = None
) -> None:
    """Resuming needs the comparison's folder, and its compare.yaml (when there) must hold the same options (the
    folds and the race too), its data.csv (when there) list the same files as the data folder holds now."""
    if not folder:
        raise ThawlineError("resuming a comparison needs its folder: pass out (CLI: --resume DIR)")
    path = Path(folder) / COMPARE_PLAN
    if not path.is_file():
        return
    plan = load_yaml_mapping(str(path))
    for key, flag in ((PLAN.folds, "--folds"), (PLAN.race, "--race")) if options is not None else ():
        started, now = plan.get(key) or None, getattr(options, key) or None
        if started != now:
            was, given = (f"no {flag}" if v is None else flag if v is True else f"{flag} {v}" for v in (started, now))
            raise ThawlineError(f"'{folder}' holds a comparison started with {was}, not {given}; resume it with the "
                                "options it was started with, or pass a new --out")  # fmt: skip
    saved = plan.get(PLAN.config)
    if not isinstance(saved, dict):
        raise ThawlineError(f"'{path}' holds no config; it is not a thawline compare folder")
    new = config.to_dict()
    saved, new = ({k: v for k, v in d.items() if k != CONFIG.strategy} for d in (saved, new))  # set per strategy
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
