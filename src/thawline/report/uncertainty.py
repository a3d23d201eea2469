"""How sure a ranking is: accuracy intervals and paired tests from each run's per-sample correctness.

    bootstrap_interval(correct)          # 95% percentile bootstrap of accuracy, fixed seed: same input, same interval
    mcnemar_p(b, c)                      # exact two-sided McNemar p from the discordant pair counts
    annotate(rows, run_dirs)             # intervals + "tied with the winner" marks on ranked rows, from run folders
    seed_spread(rows, compare_dir)       # mean and std of val/test accuracy over the seeds of `compare --seeds N`

A run folder holds the best weights' predictions: predictions.csv (the test split, or val when there is none) and,
when there is a test split, predictions_val.csv. Every strategy of a comparison is tested against the winner on
the same images (test when every run has it, else val); a difference with McNemar p >= 0.05 is not significant
and the strategy is marked tied with the winner. numpy and the standard library only: the report imports this.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thawline.core.errors import ThawlineError
from thawline.core.runformat import PREDICTIONS, ROW, SEEDS_DIR, SUMMARY, SUMMARY_FILE, VAL_PREDICTIONS
from thawline.data.names import folder_name
from thawline.report.metrics import read_predictions

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
ALPHA = 0.05  # McNemar p below this: the difference from the winner is significant
SPLIT_KEYS = {"val": ROW.val_acc_ci, "test": ROW.test_acc_ci}  # the row/summary key of each split's interval


# ---- statistics -------------------------------------------------------------------------------------------------


def _as_correct(correct: Any) -> np.ndarray:
    arr = np.asarray(correct).ravel()
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("per-sample correctness must be 0/1 (or bool) values")
    return arr.astype(np.int64)


def bootstrap_interval(
    correct: Any, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> list[float] | None:
    """Percentile bootstrap interval of accuracy from per-sample correctness (0/1); None for no samples.

    Resampling n items with replacement from a 0/1 vector with k ones gives a number of ones distributed as
    Binomial(n, k/n), so each resample's count is drawn from that binomial directly: the same bootstrap
    distribution as drawing n indices per resample, without n x resamples draws. The bounds are the
    (1-level)/2 and (1+level)/2 quantiles (inverted CDF) of the resampled accuracies, so they are multiples of 1/n.
    """
    arr = _as_correct(correct)
    n = int(arr.size)
    if n == 0:
        return None
    if resamples < 1 or not 0 < level < 1:
        raise ValueError("resamples must be >= 1 and level in (0, 1)")
    rng = np.random.default_rng(seed)
    accs = rng.binomial(n, arr.sum() / n, size=resamples) / n
    lo, hi = np.quantile(accs, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return [round(float(lo), 6), round(float(hi), 6)]


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs: b samples only the first model got right, c only
    the second. Under "equally good" each discordant pair goes either way with probability 1/2, so
    p = min(1, 2 * sum_{k <= min(b, c)} C(b+c, k) / 2^(b+c)); 1 when there are no discordant pairs."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0)
    for k in range(min(b, c)):
        term = term * (n - k) // (k + 1)  # C(n, k + 1), exact
        tail += term
    return min(1.0, 2 * tail / 2**n)  # exact integers; int / int is correctly rounded


def holm(pvalues: Any) -> list[float]:
    """Holm's step-down adjusted p-values (statsmodels' `multipletests`), in the given order; [] for none: several
    strategies tested against one winner would otherwise find a "significant" difference by chance."""
    pvalues = list(pvalues)
    if not pvalues:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(pvalues, method="holm")[1]]


@dataclass(frozen=True)
class Paired:
    """A paired comparison of two models on the same n samples."""

    n: int
    first_only: int  # samples only the first model got right (b)
    second_only: int  # samples only the second model got right (c)

    @property
    def p(self) -> float:
        return mcnemar_p(self.first_only, self.second_only)


def mcnemar(first: Any, second: Any) -> Paired:
    """Discordant counts and (via `.p`) the exact McNemar p of two aligned 0/1 correctness vectors."""
    a, b = _as_correct(first), _as_correct(second)
    if a.shape != b.shape:
        raise ValueError(f"paired correctness differs in length: {a.size} vs {b.size}")
    return Paired(int(a.size), int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum()))


# ---- per-sample correctness of runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Correctness:
    """One run's per-sample correctness on one split; `paths` (when known) pair samples across runs."""

    correct: np.ndarray
    paths: tuple[str, ...] | None = None

    @classmethod
    def of(cls, value: Correctness | Any) -> Correctness:
        return value if isinstance(value, Correctness) else cls(_as_correct(value))


def read_correctness(run_dir: Path | str) -> tuple[dict[str, Correctness], list[str]]:
    """{split: correctness} from a run folder's predictions.csv and predictions_val.csv, and notes on what failed."""
    run_dir = Path(run_dir)
    found: dict[str, Correctness] = {}
    notes: list[str] = []
    for name in (PREDICTIONS, VAL_PREDICTIONS):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            preds = read_predictions(path)
        except ThawlineError as e:
            notes.append(str(e))
            continue
        split = preds.split or ("val" if name == VAL_PREDICTIONS else "")
        if split in SPLIT_KEYS and split not in found:
            found[split] = Correctness(_as_correct(preds.correct), tuple(preds.paths))
    return found, notes


def _under_common_folder(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Each path relative to the folder its files share: one run given `data/x` and another `/home/me/data/x` (or
    another copy of the folder) name the same images alike."""
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:  # no paths, or absolute and relative mixed
        return paths
    return tuple(os.path.relpath(p, root) for p in paths)


def _align(winner: Correctness, other: Correctness) -> tuple[np.ndarray, np.ndarray] | None:
    """The two correctness vectors over the same samples in the same order, or None when they cannot be paired."""
    if winner.paths is None or other.paths is None or winner.paths == other.paths:
        return (winner.correct, other.correct) if winner.correct.shape == other.correct.shape else None
    mine, theirs = _under_common_folder(winner.paths), _under_common_folder(other.paths)
    index = {p: i for i, p in enumerate(theirs)}
    if len(index) != len(theirs) or len(set(mine)) != len(mine) or set(index) != set(mine):
        return None
    return winner.correct, other.correct[[index[p] for p in mine]]


# ---- ties with the winner ---------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """The winner against the runner-up (rows[0] vs rows[1]) on `split`, and every strategy tied with the winner."""

    winner: str
    runner_up: str
    split: str | None  # None: the winner has no per-image predictions to test against
    n: int | None = None
    winner_only: int | None = None  # images only the winner got right
    runner_up_only: int | None = None
    p: float | None = None
    tied: list[str] | None = None  # strategies whose difference from the winner is not significant
    untested: list[str] | None = None  # strategies without paired predictions on `split`

    @property
    def significant(self) -> bool | None:
        return None if self.p is None else self.p < ALPHA


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def mark_ties(rows: list[dict[str, Any]], correctness: Mapping[str, Mapping[str, Any]]) -> Verdict | None:
    """Mark every ranked row against the winner (rows[0]): `p_vs_winner` (exact McNemar p, Holm-adjusted over the
    strategies tested), `tied` (True when that p >= 0.05, False when significant, None for the winner and for a run
    without paired predictions) and
    `tie_split`. `correctness[strategy][split]` is a `Correctness` or a 0/1 array. The test split is used when
    every run has it, else val. Returns the verdict (None for fewer than two rows)."""
    for r in rows:
        r[ROW.p_vs_winner], r[ROW.tied], r[ROW.tie_split] = None, None, None
    if len(rows) < 2:
        return None
    names = [r[ROW.strategy] for r in rows]
    per_run = {n: {s: Correctness.of(v) for s, v in (correctness.get(n) or {}).items()} for n in names}
    # test when every run has it, else val; with runs lacking both, the winner's split most runs share
    covered = [s for s in ("test", "val") if s in per_run[names[0]]]
    split = max(covered, key=lambda s: (all(s in per_run[n] for n in names), sum(s in per_run[n] for n in names)),
                default=None)  # fmt: skip
    verdict = Verdict(names[0], names[1], split, tied=[], untested=[])
    if split is None:
        verdict.untested = names[1:]
        return verdict
    winner = per_run[names[0]][split]
    tests: dict[int, Paired] = {}
    for i, r in enumerate(rows[1:], 1):
        own = per_run[r[ROW.strategy]].get(split)
        pair = _align(winner, own) if own is not None else None
        r[ROW.tie_split] = split
        if pair is None:
            verdict.untested.append(r[ROW.strategy])
        else:
            tests[i] = mcnemar(*pair)
    for i, p in zip(tests, holm(t.p for t in tests.values()), strict=True):  # Holm over the strategies tested
        r = rows[i]
        r[ROW.p_vs_winner] = p
        r[ROW.tied] = p >= ALPHA
        if r[ROW.tied]:
            verdict.tied.append(r[ROW.strategy])
        if i == 1:
            test = tests[i]
            verdict.n, verdict.winner_only, verdict.runner_up_only, verdict.p = (
                test.n, test.first_only, test.second_only, p,
            )  # fmt: skip
    rows[0][ROW.tie_split] = split
    return verdict


def verdict_line(v: Verdict | None) -> str | None:
    """One console line: does the winner really beat the runner-up?"""
    if v is None:
        return None
    head = f"winner {v.winner}, runner-up {v.runner_up}"
    if v.p is None:
        why = "no split with predictions of both" if v.split is None else f"no paired {v.split} predictions"
        return f"{head}: {why}, so their difference is untested"
    diff = abs(v.winner_only - v.runner_up_only)
    verdict = "significant" if v.significant else "not significant (tied)"
    line = (
        f"{head}: they differ by {diff} image{'s' if diff != 1 else ''} of {v.n} on {v.split} "
        f"({v.winner_only} vs {v.runner_up_only} right only by one of them), McNemar p={fmt_p(v.p)} (Holm): {verdict}"
    )
    others = [n for n in v.tied or [] if n != v.runner_up]
    if others:
        line += f"; also tied with the winner: {', '.join(others)}"
    return line


# ---- rows of a comparison ---------------------------------------------------------------------------------------


def annotate(rows: list[dict[str, Any]], run_dirs: Mapping[str, Path | str]) -> tuple[Verdict | None, list[str]]:
    """Fill each row's missing `val_acc_ci`/`test_acc_ci` from its run folder's prediction files and mark ties
    with the winner (`mark_ties`). Returns the verdict and notes naming what could not be computed and why."""
    correctness: dict[str, dict[str, Correctness]] = {}
    notes: list[str] = []
    no_val: list[str] = []
    for r in rows:
        name = r[ROW.strategy]
        run_dir = run_dirs.get(name)
        found, read_notes = read_correctness(run_dir) if run_dir is not None else ({}, [])
        notes += read_notes
        correctness[name] = found
        for split, key in SPLIT_KEYS.items():
            r.setdefault(key, None)
            if r[key] is None and split in found:
                r[key] = bootstrap_interval(found[split].correct)
        if r.get(ROW.val_acc_ci) is None:
            no_val.append(name)
    if no_val:
        notes.append(
            f"no val predictions ({VAL_PREDICTIONS}) for {', '.join(no_val)}: the val interval shows — "
            "(run folders from before the val split's predictions were saved; rerun the strategy to get it)"
        )
    verdict = mark_ties(rows, correctness)
    if verdict is not None and verdict.untested:
        where = f"{verdict.split} predictions" if verdict.split else "test or val predictions"
        notes.append(f"no paired {where} for {', '.join(verdict.untested)}: untested against the winner")
    return verdict, notes


# ---- spread over seeds ------------------------------------------------------------------------------------------

SEED_KEYS = {SUMMARY.best_val_acc: ROW.val_acc_seeds, SUMMARY.test_acc: ROW.test_acc_seeds}  # summary key -> row key


def seed_spread(
    rows: list[dict[str, Any]], compare_dir: Path | str, folder_of: Callable[[str], str] | None = None
) -> None:
    """Set each row's `val_acc_seeds`/`test_acc_seeds` to [mean, std, n] over its own run and the same strategy's
    finished runs in `compare_dir/seeds/seed-*/<folder_of(name)>` (sample std, ddof 1; default folder: the name with
    / as _); rows with one seed are left alone."""
    import json

    seeds_dir = Path(compare_dir) / SEEDS_DIR
    for row in rows:
        folder = folder_of(str(row[ROW.strategy])) if folder_of else folder_name(str(row[ROW.strategy]))
        values = {key: [row.get(key)] for key in SEED_KEYS}
        for summary_path in sorted(seeds_dir.glob(f"seed-*/{folder}/{SUMMARY_FILE}")):
            summary = json.loads(summary_path.read_text())
            for key in SEED_KEYS:
                values[key].append(summary.get(key))
        for key, row_key in SEED_KEYS.items():
            xs = np.array([v for v in values[key] if v is not None], dtype=float)
            if xs.size > 1:
                row[row_key] = [round(float(xs.mean()), 6), round(float(xs.std(ddof=1)), 6), int(xs.size)]
