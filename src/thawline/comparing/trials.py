"""A comparison is trials -> scheduler -> executor -> answer; this module holds its first part, with no torch.

A `Trial` is one run of the comparison (a strategy, on a model of a grid, with a seed) and `trial_folder` the one
place that says where it runs. A scheduler (`schedulers.py`) asks for `Request`s (a trial, trained until an epoch
or to its whole budget), an executor (`executor.py`) runs each, and the answer (the ranking, its ties, the report)
reads the run folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from thawline.core.runformat import FOLD_PREFIX, SEEDS_DIR
from thawline.data.names import folder_name
from thawline.report.ranking import grid_name, model_folder


@dataclass(frozen=True)
class Trial:
    """One run of a comparison. `model`: its model in a model grid (None outside one: the config's model); `seed`:
    its training seed (the config's for the ranked runs, the next ones for `seeds=N`); `fold`: its fold (0-based) in
    a K-fold comparison (None outside one), validated on that fold and trained on the others."""

    strategy: str
    model: str | None
    seed: int
    fold: int | None = None

    @property
    def name(self) -> str:
        """Its row in the comparison table: the strategy, or "model / strategy" in a model grid."""
        return grid_name(self.model, self.strategy) if self.model else self.strategy


@dataclass(frozen=True)
class Request:
    """Train `trial` until global epoch `until` and pause there (successive halving's rungs), or to its whole
    budget (`until` None: on resume, a finished run trained with the same options is reused)."""

    trial: Trial
    until: int | None = None


def model_dir(out_dir: Path, model: str | None) -> Path:
    """Where a model's own files go (advise/, halving.json): the comparison's folder, or its model's in a grid."""
    return out_dir / model_folder(model) if model else out_dir


def trial_folder(out_dir: Path, trial: Trial, first_seed: int) -> Path:
    """The trial's run folder: OUT/<strategy>, OUT/<model>/<strategy> in a grid, OUT/<strategy>/fold-<i> (1-based)
    in a K-fold comparison, and for a seed other than `first_seed` (the config's) OUT/seeds/seed-<s>/[<model>/]..."""
    run = model_dir(Path(), trial.model) / folder_name(trial.strategy)
    if trial.fold is not None:
        run = run / fold_folder(trial.fold)
    return out_dir / run if trial.seed == first_seed else out_dir / SEEDS_DIR / f"seed-{trial.seed}" / run


def fold_folder(fold: int) -> str:
    return f"{FOLD_PREFIX}{fold + 1}"


def make_trials(strategies: list[str], model: str | None, first_seed: int, seeds: int) -> list[Trial]:
    """Every strategy on `model` with each of `seeds` seeds from `first_seed`: the first seed's trials first."""
    return [Trial(name, model, first_seed + k) for k in range(seeds) for name in strategies]
