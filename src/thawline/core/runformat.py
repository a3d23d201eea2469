"""The run-folder format: the name of every file and folder thawline writes into a run, compare or sweep folder,
and the keys of the files the rest of thawline reads back (summary.json, metrics.jsonl, comparison.json/csv,
config.yaml, compare.yaml), declared once; the rest of thawline asks here. No torch, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

# The marker thawline writes into every folder it creates ({"kind": "run"|"compare"|"sweep", "format": 1}): what
# lets --overwrite empty a folder and keeps discovery from reading it as data.
RUN_MARKER = ".thawline.json"
RUN_FORMAT = 1
MARKER_KINDS = ("run", "compare", "sweep")
LOCK_NAME = ".thawline.lock"  # the flock held while a process writes the folder

# A run's files.
CONFIG_FILE = "config.yaml"  # the full resolved config (train --config RUN/config.yaml reruns it)
SUMMARY_FILE = "summary.json"  # written last: a finished run
METRICS_FILE = "metrics.jsonl"  # one line an epoch
LAST_CKPT = "last.pt"  # what --resume continues from
BEST_CKPT = "best.pt"  # the best val epoch's weights
PREDICTIONS = "predictions.csv"  # the best weights on test (val when there is no test split)
VAL_PREDICTIONS = "predictions_val.csv"
PROBABILITIES = "probabilities.npz"  # the best weights' class probabilities on val and test (folds, ensembles)
SKIPPED_CSV = "skipped.csv"  # every file left out, with the reason
DATA_FILE = "data.csv"  # the files the run was given (split, path, class, content key): resume checks it
SHIFT_JSON = "shift.json"  # compare --shift-test: {shifted set: accuracy} of the best weights

# A comparison's files (its runs are run folders inside it).
COMPARE_PLAN = "compare.yaml"
COMPARISON_JSON = "comparison.json"  # written last: a finished comparison
COMPARISON_CSV = "comparison.csv"
HALVING_JSON = "halving.json"
SEEDS_DIR = "seeds"  # the extra seeds' runs: OUT/seeds/seed-<s>/[<model>/]<strategy>
FOLD_PREFIX = "fold-"  # compare --folds K: OUT/<strategy>/fold-<i>, i = 1..K
FOLDS_CSV = "folds.csv"  # compare --folds: every pooled file's fold (path, class, fold)
RACE_JSON = "race.json"  # compare --race: the folds seen, who stopped after which fold and why
OOF_NPZ = "oof.npz"  # compare --folds: each finalist's out-of-fold and test probabilities, and the answer's
REFIT_DIR = "refit"  # compare --folds --refit: OUT/<strategy>/refit, the answer's strategy on train and val pooled

# A sweep's files (each finished trial is a run folder inside it).
TRIALS_CSV = "trials.csv"  # every trial, pruned and failed ones included
SWEEP_SUMMARY = "sweep_summary.json"


def trial_dir(number: int) -> str:
    """The run folder of a sweep's trial, inside the sweep folder."""
    return f"trial-{number}"


# The report, in a run or compare folder.
REPORT_NAME = "report.html"
FIG_DIR = "report_files"

# Files that say a folder holds a run (partial: last.pt; finished: summary.json): a fresh run never writes there.
RUN_FILES = (LAST_CKPT, SUMMARY_FILE)
# What a compare folder holds (comparison.json once finished): a fresh comparison never writes there.
COMPARE_FILES = (COMPARE_PLAN, COMPARISON_JSON)

# Every entry thawline writes into a folder it created (shell patterns; `parent/name` for a sub-folder's files):
# --overwrite removes these and nothing else; a sub-folder goes only when it is marked, named here, or holds runs.
FORMAT_ENTRIES = (
    RUN_MARKER, LOCK_NAME, ".*.tmp", ".write-test",  # the marker, the lock, atomic writes cut short, the write probe
    CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, LAST_CKPT, BEST_CKPT, SKIPPED_CSV, "skipped.json",
    "predictions*.csv", "prediction_grid.png", "events.out.tfevents.*", "lr_find*.json",
    "evaluation*.json", "evaluation_*.csv", "model.onnx", "preprocessing.json",
    SHIFT_JSON, "shift.png", DATA_FILE, PROBABILITIES,
    COMPARE_PLAN, COMPARISON_CSV, COMPARISON_JSON, HALVING_JSON, REPORT_NAME, FIG_DIR, f"{FIG_DIR}/*.png",
    "advise", "advise/*", SEEDS_DIR, "seed-*", f"{FOLD_PREFIX}*", REFIT_DIR, FOLDS_CSV, RACE_JSON, OOF_NPZ,
    TRIALS_CSV, SWEEP_SUMMARY, "sweep.db", "best_strategy.yaml", "best_config.yaml", "trial-*",
)  # fmt: skip


# ---- the keys inside those files ------------------------------------------------------------------------------
# Each file's keys as a frozen dataclass whose fields are the keys, in the order its writer puts them:
# `SUMMARY.test_acc` is "test_acc". Writers build their dicts with these and readers index with them, so a key is
# spelled once, here, and `grep test_acc` still finds every use. (Tests keep literals: they check the format from
# outside.)


@dataclass(frozen=True)
class SummaryKeys:
    """summary.json, written last by a finished run (training/rows.py); the report, compare, sweep, `train`'s last
    line and a resumed compare read it."""

    strategy: str = "strategy"
    model: str = "model"
    weights: str = "weights"  # where the pretrained weights came from (config.yaml's weights_source)
    classes: str = "classes"
    best_val_acc: str = "best_val_acc"
    best_epoch: str = "best_epoch"
    test_acc: str = "test_acc"  # the best weights on test (None without a test split)
    test_loss: str = "test_loss"
    epochs: str = "epochs"
    phases: str = "phases"  # the resolved phases (`ResolvedPhase.to_dict()`)
    trainable_params: str = "trainable_params"  # per phase
    phase_results: str = "phase_results"  # per phase: PHASE_RESULT's keys
    total_params: str = "total_params"
    wall_time_s: str = "wall_time_s"
    train_time_s: str = "train_time_s"  # the epochs' seconds: what the ranking's ties are broken on
    images_per_s: str = "images_per_s"
    peak_rss_mb: str = "peak_rss_mb"
    peak_gpu_mb: str = "peak_gpu_mb"
    cpu_threads: str = "cpu_threads"  # torch's intra-op threads (float sums, and the speed, depend on them)
    omp_wait: str = "omp_wait"  # how idle OpenMP threads waited: OMP_WAIT_POLICY[, GOMP_SPINCOUNT] (CPU speed)
    layer_drift: str = "layer_drift"  # {stage: relative weight change}
    num_train: str = "num_train"  # the data's counts (COUNT_KEYS) and shares held out, as config.yaml has them
    num_val: str = "num_val"
    num_test: str = "num_test"
    held_out: str = "held_out"
    fold: str = "fold"  # compare --folds: which fold this run trained on (1-based), and of how many
    folds: str = "folds"
    data_digest: str = "data_digest"  # per split: which files the accuracies are on (data.csv)
    skipped_files: str = "skipped_files"
    img_size: str = "img_size"
    device: str = "device"
    predictions_split: str = "predictions_split"  # the split predictions.csv holds
    val_acc_ci: str = "val_acc_ci"  # 95% bootstrap intervals [lo, hi]
    test_acc_ci: str = "test_acc_ci"
    # added by `compare --shift-test` (data/shift.py's shift_summary, then the shifted sets' folder)
    shifted_acc: str = "shifted_acc"
    shift_gap: str = "shift_gap"
    shift_sets: str = "shift_sets"
    shift_test: str = "shift_test"


SUMMARY = SummaryKeys()
# The summary's (and config.yaml's) image count of each split.
COUNT_KEYS = {"train": SUMMARY.num_train, "val": SUMMARY.num_val, "test": SUMMARY.num_test}


@dataclass(frozen=True)
class PhaseResultKeys:
    """Each entry of summary.json's phase_results."""

    phase: str = "phase"  # 1-based
    train: str = "train"  # the phase's train selector
    epochs: str = "epochs"
    best_val_acc: str = "best_val_acc"
    last_val_acc: str = "last_val_acc"
    test_acc_at_end: str = "test_acc_at_end"  # with --test-each-phase


PHASE_RESULT = PhaseResultKeys()


@dataclass(frozen=True)
class EpochKeys:
    """A line of metrics.jsonl, one an epoch (training/rows.py); the report's curves, halving, the sweep's pruner,
    the trackers and a resume read it."""

    strategy: str = "strategy"
    phase: str = "phase"  # 1-based
    phase_train: str = "phase_train"
    epoch: str = "epoch"  # over the whole run, 1-based
    epoch_in_phase: str = "epoch_in_phase"
    train_loss: str = "train_loss"
    train_acc: str = "train_acc"
    val_loss: str = "val_loss"
    val_acc: str = "val_acc"
    lr: str = "lr"
    seconds: str = "seconds"
    images_per_s: str = "images_per_s"
    trainable_params: str = "trainable_params"
    feature_cache: str = "feature_cache"  # trained on cached frozen-prefix features
    rss_mb: str = "rss_mb"
    passes: str = "passes"  # passes over the train set this epoch (> 1: small data reaching --min-steps)
    head_fit: str = "head_fit"  # the solved head's candidate, on the epoch it was fitted (when --head-solver ran)


EPOCH = EpochKeys()


@dataclass(frozen=True)
class RowKeys:
    """A row of comparison.json / comparison.csv (report/ranking.py builds it from the run's summary.json and orders
    the columns; csv: rank, strategy, the columns, run_dir, and with --folds the folds' columns last). A column read
    from the summary has the summary's key."""

    rank: str = "rank"
    strategy: str = "strategy"  # the row's name: the strategy, or `model / strategy` in a model grid
    oof_acc: str = "oof_acc"  # compare --folds: out-of-fold accuracy over every pooled image
    oof_acc_ci: str = "oof_acc_ci"
    folds_acc: str = "folds_acc"  # [mean, std, n] of the folds' val accuracies
    best_val_acc: str = SummaryKeys.best_val_acc
    val_acc_ci: str = SummaryKeys.val_acc_ci
    val_acc_seeds: str = "val_acc_seeds"  # [mean, std, n] over `compare --seeds`
    test_acc: str = SummaryKeys.test_acc
    test_acc_seeds: str = "test_acc_seeds"
    test_acc_ci: str = SummaryKeys.test_acc_ci
    shifted_acc: str = SummaryKeys.shifted_acc
    shift_gap: str = SummaryKeys.shift_gap
    p_vs_winner: str = "p_vs_winner"  # exact McNemar p against rank 1 (Holm-adjusted)
    p_folds: str = "p_folds"  # compare --folds: corrected t-test p against rank 1 over the folds (Holm)
    tied: str = "tied"  # p >= 0.05 against rank 1
    epochs: str = SummaryKeys.epochs
    train_time_s: str = SummaryKeys.train_time_s
    wall_time_s: str = SummaryKeys.wall_time_s
    images_per_s: str = SummaryKeys.images_per_s
    trainable_params: str = SummaryKeys.trainable_params  # per phase, '/'-joined
    peak_rss_mb: str = SummaryKeys.peak_rss_mb
    time_vs_full: str = "time_vs_full"  # train time relative to the full fine-tune's
    run_dir: str = "run_dir"
    tie_split: str = "tie_split"  # json only: the split the ties were tested on


ROW = RowKeys()


@dataclass(frozen=True)
class ConfigKeys:
    """config.yaml: every option under its `TrainConfig` field name (core/config.py declares the options; the ones
    readers of a run folder ask for by name are below), then what the run derived from them (training/prepare.py's
    `RunSetup.resolved_config`, DERIVED_KEYS). A checkpoint holds the same dict."""

    # options
    data: str = "data"
    model: str = "model"
    weights: str = "weights"
    strategy: str = "strategy"
    img_size: str = "img_size"  # an option, and the size the run resolved
    lr: str = "lr"
    drop_rate: str = "drop_rate"
    hflip: str = "hflip"
    min_scale: str = "min_scale"
    seed: str = "seed"
    device: str = "device"  # the option, replaced by the device the run used ("cuda:0")
    amp: str = "amp"  # the option, replaced by what the run derived
    channels_last: str = "channels_last"
    cache_dir: str = "cache_dir"
    val_split: str = "val_split"
    test_split: str = "test_split"
    # derived
    strategy_init: str = "strategy_init"
    strategy_head: str = "strategy_head"  # only when not linear
    phases: str = "phases"
    stages: str = "stages"
    classes: str = "classes"
    interpolation: str = "interpolation"
    mean: str = "mean"
    std: str = "std"
    weights_source: str = "weights_source"
    weights_sha256: str = "weights_sha256"
    num_train: str = SummaryKeys.num_train
    num_val: str = SummaryKeys.num_val
    num_test: str = SummaryKeys.num_test
    held_out: str = SummaryKeys.held_out
    fold: str = SummaryKeys.fold  # a fold run of compare --folds
    folds: str = SummaryKeys.folds
    lr_auto: str = "lr_auto"  # only when --lr auto: the LR came from the range test
    world_size: str = "world_size"
    class_weight_values: str = "class_weight_values"  # only with --class-weights


CONFIG = ConfigKeys()
# The keys config.yaml holds beside the options: `make_config` ignores exactly these, so a run's config.yaml is
# itself a --config file that reruns the run.
DERIVED_KEYS = (
    CONFIG.strategy_init, CONFIG.strategy_head, CONFIG.phases, CONFIG.stages, CONFIG.classes, CONFIG.interpolation,
    CONFIG.mean, CONFIG.std, CONFIG.weights_source, CONFIG.weights_sha256, CONFIG.num_train, CONFIG.num_val,
    CONFIG.num_test, CONFIG.held_out, CONFIG.fold, CONFIG.folds, CONFIG.lr_auto, CONFIG.world_size,
    CONFIG.class_weight_values,
)  # fmt: skip


@dataclass(frozen=True)
class PlanKeys:
    """compare.yaml, written when a comparison starts (comparing/comparison.py): what `compare --resume` and the
    report read back."""

    strategies: str = "strategies"
    config: str = "config"  # `TrainConfig.to_dict()`
    seeds: str = "seeds"
    halving: str = "halving"
    advise: str = "advise"
    models: str = "models"
    shift_test: str = "shift_test"
    folds: str = "folds"
    race: str = "race"


PLAN = PlanKeys()
