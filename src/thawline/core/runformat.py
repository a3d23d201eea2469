"""The run-folder format: the name of every file and folder thawline writes into a run, compare or sweep folder,
declared once; the rest of thawline asks here. No torch, no I/O."""

from __future__ import annotations

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
    "shift.json", "shift.png", DATA_FILE, PROBABILITIES,
    COMPARE_PLAN, COMPARISON_CSV, COMPARISON_JSON, HALVING_JSON, REPORT_NAME, FIG_DIR, f"{FIG_DIR}/*.png",
    "advise", "advise/*", SEEDS_DIR, "seed-*", f"{FOLD_PREFIX}*", FOLDS_CSV, RACE_JSON, OOF_NPZ,
    "trials.csv", "sweep_summary.json", "sweep.db", "best_strategy.yaml", "best_config.yaml", "trial-*",
)  # fmt: skip
