"""What a comparison trains: `CompareOptions`, checked against its config before anything is written. No torch
(the model names are looked up in timm only when a grid is asked for)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thawline.comparing.retries import DEFAULT_RETRIES, check_retries
from thawline.core.config import TrainConfig
from thawline.core.errors import ThawlineError
from thawline.data.folds import check_k
from thawline.data.names import folder_name
from thawline.data.shift import shift_sets
from thawline.report.ranking import model_folder
from thawline.training.strategies import STRATEGIES, check_budget, get_strategy

# Every registered strategy: a default that leaves one out can miss the winner (layer-wise and gradual won on
# small real photos where the other five were compared).
DEFAULT_STRATEGIES = tuple(STRATEGIES)

Names = str | list[str] | tuple[str, ...]
EMPTY_MODELS = "--models is empty; give a comma-separated list such as tf_efficientnet_lite0,resnet50"


@dataclass(frozen=True)
class CompareOptions:
    """A comparison's options besides the training config (`thawline.compare`'s keyword arguments, typed):
    `strategies` on every model of `models` (a grid when two or more; one is the plain layout with that model),
    each with `seeds` seeds; `halving`: successive halving (per model, by the mean over seeds); `advise`: the
    advisor's pass first (per model), leaving out the strategies it ranks far behind; `shift_test`: a tree of
    `thawline data shift` to evaluate every ranked run on; `folds`: K-fold cross-validation over train and val
    pooled (`crossval.py`), `race`: strategies clearly behind stop between folds, `refit`: the answer's best single
    strategy trained once more on train and val pooled (`refit.py`); `jobs`: how many trials train at
    once, each in a worker process of this machine (`pool.py`; 1: one after another in this process), and
    `trials_per_gpu` of them share each GPU; `ray`: the trials as tasks on a Ray cluster instead (`ray_executor.py`;
    the cluster's address, "" for Ray's default), each given `gpus_per_trial` GPUs (fractional packs) and
    `cpus_per_trial` CPUs; `retries`: how often a trial whose worker died is resumed before it is reported failed
    (`retries.py`); `out`: the folder (None: the config's `out`, else a new runs/compare-N)."""

    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    out: Path | None = None
    models: tuple[str, ...] = ()
    seeds: int = 1
    halving: bool = False
    advise: bool = False
    shift_test: Path | None = None
    folds: int | None = None
    race: bool = False
    refit: bool = False
    jobs: int = 1
    trials_per_gpu: int = 1
    ray: str | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    retries: int = DEFAULT_RETRIES
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    @classmethod
    def of(
        cls,
        strategies: Names = DEFAULT_STRATEGIES,
        out: str | Path | None = None,
        *,
        models: Names | None = None,
        shift_test: str | Path | None = None,
        **options: Any,
    ) -> CompareOptions:
        """From `thawline.compare`'s arguments (this class's fields, declared only here): comma-separated names
        split, paths made `Path`s; an unknown keyword is a TypeError naming it."""
        if isinstance(models, str) and not split_names(models):
            raise ThawlineError(EMPTY_MODELS)
        return cls(strategies=tuple(split_names(strategies)), out=Path(out) if out else None,
                   models=tuple(split_names(models or ())), shift_test=Path(shift_test) if shift_test else None,
                   **options)  # fmt: skip


def split_names(text: Names) -> list[str]:
    return [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]


def parse_strategies(text: Names, strategies_file: str | None = None) -> list[str]:
    names = split_names(text)
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


def parse_models(text: Names | None) -> list[str]:
    """`--models a,b`: the grid's model names (checked against timm before anything trains); [] when not given
    (a compare.yaml of a one-model comparison records [])."""
    if text is None or (not isinstance(text, str) and not text):
        return []
    names = split_names(text)
    if not names:
        raise ThawlineError(EMPTY_MODELS)
    if len(set(names)) != len(names):
        raise ThawlineError(f"--models lists a model twice: {','.join(names)}")
    from thawline.models.weights import check_model_name  # timm: only for a grid

    for name in names:
        check_model_name(name)  # one clear line for an unknown name
    folders = [model_folder(n) for n in names]
    if len(set(folders)) != len(folders):
        raise ThawlineError(f"--models {','.join(names)}: two names share a folder name; list each model once")
    return names


def check_options(config: TrainConfig, options: CompareOptions) -> tuple[list[str], list[str]]:
    """The strategies and the grid's models (none for one model), each refused in one line before anything is
    written when it cannot run. Every combination of seeds, models, halving, advise and shift test runs; folds run
    with advise, and the others are refused with them (`check_folds_options`)."""
    names = parse_strategies(options.strategies, config.strategies_file)
    grid = parse_models(options.models)
    if options.seeds < 1:
        raise ThawlineError(f"--seeds {options.seeds}: must be 1 or more")
    if options.halving and config.epochs is None:
        raise ThawlineError("--halving needs an epoch budget: pass --epochs N")
    check_folds_options(options, grid)
    check_jobs(options.jobs)
    check_placement(options)
    if options.shift_test is not None:
        shift_sets(options.shift_test)  # one line before anything is written; its classes once data is read
    for name in names:  # every strategy's budget before any is trained
        check_budget(get_strategy(name, config.strategies_file), config.epochs)
    return names, grid


def check_jobs(jobs: int) -> None:
    """`--jobs N`: 1 or more, and not under torchrun, whose processes already train each run together (DDP)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ThawlineError(f"--jobs {jobs}: must be 1 or more (the trials trained at once)")
    world = os.environ.get("WORLD_SIZE", "1")
    if jobs > 1 and world.isdigit() and int(world) > 1:
        raise ThawlineError(f"--jobs {jobs} under torchrun ({world} processes): DDP already spreads each training "
                            "over them; drop --jobs, or run without torchrun to train trials side by side")  # fmt: skip


def check_placement(options: CompareOptions) -> None:
    """`--trials-per-gpu`, `--ray` and its `--gpus-per-trial`/`--cpus-per-trial`, `--retries`: each refused in one
    line where it cannot apply."""
    check_retries(options.retries)
    per_gpu = options.trials_per_gpu
    if isinstance(per_gpu, bool) or not isinstance(per_gpu, int) or per_gpu < 1:
        raise ThawlineError(f"--trials-per-gpu {per_gpu}: must be 1 or more (the --jobs workers sharing a GPU)")
    if options.ray is None:
        for flag, given in (("--gpus-per-trial", options.gpus_per_trial), ("--cpus-per-trial", options.cpus_per_trial)):
            if given is not None:
                raise ThawlineError(f"{flag} places trials on a Ray cluster: pass --ray [ADDRESS] with it (with "
                                    "--jobs N each worker gets a GPU, or --trials-per-gpu M share one)")  # fmt: skip
        if per_gpu > 1 and options.jobs == 1:
            raise ThawlineError(f"--trials-per-gpu {per_gpu} packs --jobs workers onto each GPU: pass --jobs N")
        return
    if options.jobs > 1:
        raise ThawlineError(f"--ray with --jobs {options.jobs}: Ray places the trials on its cluster, as many at once "
                            "as its resources hold; drop --jobs")  # fmt: skip
    if per_gpu > 1:
        raise ThawlineError(f"--trials-per-gpu {per_gpu} is for --jobs; with --ray, --gpus-per-trial "
                            f"{1 / per_gpu:.2g} puts {per_gpu} trials on a GPU")  # fmt: skip
    gpus, cpus = options.gpus_per_trial, options.cpus_per_trial
    if gpus is not None and not 0 <= gpus <= 1:
        raise ThawlineError(f"--gpus-per-trial {gpus:g}: a trial trains on one GPU; give 1, or a fraction such as "
                            "0.5 to put two trials on a GPU (0: on CPUs)")  # fmt: skip
    if cpus is not None and not cpus > 0:
        raise ThawlineError(f"--cpus-per-trial {cpus:g}: must be more than 0")
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise ThawlineError(f"--ray under torchrun ({world} processes): each Ray task trains a trial on its own; "
                            "run the compare without torchrun")  # fmt: skip
    from thawline.comparing.ray_executor import import_ray

    import_ray()  # installed, or the one line naming the extra, before anything is written


def check_folds_options(options: CompareOptions, grid: list[str]) -> None:
    """`--folds` and `--race`: what they combine with, refused in one line with the reason."""
    if options.race and not options.folds:
        raise ThawlineError("--race stops strategies between folds: pass --folds K with it (--folds 5 --race)")
    if options.refit and not options.folds:
        raise ThawlineError("--refit trains the answer of the folds once more on train and val pooled: pass --folds K "
                            "with it (--folds 5 --refit)")  # fmt: skip
    if not options.folds:
        return
    check_k(options.folds)
    refused = {
        "--halving": (options.halving, "halving stops strategies on the first epochs of one val split; with folds, "
                      "--race stops them on whole folds: pass --race instead"),
        "--seeds": (options.seeds > 1, "each strategy already trains once per fold, which averages over training "
                    "randomness: drop --seeds"),
        "--models": (len(grid) > 1, "a cross-validated model grid is not built yet: compare one --model with "
                     "--folds, or drop --folds"),
        "--shift-test": (options.shift_test is not None, "the shift test of a cross-validated answer is not built "
                         "yet: run `thawline evaluate` of the answer on each shifted set, or drop --folds"),
    }  # fmt: skip
    for flag, (given, why) in refused.items():
        if given:
            raise ThawlineError(f"--folds {options.folds} with {flag}: {why}")
