"""The argparse parser: the subcommands, their flags (the training options' flags derived from the config's
fields) and the handler each one runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from thawline.cli.commands import (
    cmd_advise,
    cmd_cache_clear,
    cmd_cache_ls,
    cmd_compare,
    cmd_data_check,
    cmd_data_prepare,
    cmd_data_shift,
    cmd_evaluate,
    cmd_export,
    cmd_lr_find,
    cmd_predict,
    cmd_report,
    cmd_strategies,
    cmd_sweep,
    cmd_train,
)
from thawline.comparing.retries import DEFAULT_RETRIES
from thawline.core.config import TrainConfig, option_specs


def _number(kind: type, words: tuple[str, ...]):
    """argparse type for a numeric option that also accepts some words (`--lr auto`)."""

    def parse(text: str) -> Any:
        if text.strip().lower() in words:
            return text.strip().lower()
        try:
            return kind(text)
        except ValueError:
            alternatives = "".join(f", nor {w}" for w in words)
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind.__name__}{alternatives}") from None

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_config_options(p: argparse.ArgumentParser, cls: type | None = None) -> None:
    """One flag per option field of the config class (`img_size` -> `--img-size`), typed and documented by the
    field's declaration in config.py: adding an option there adds its flag here."""
    for spec in option_specs(cls or TrainConfig):
        if spec.cli.get("skip"):
            continue
        flag = spec.flag
        kw: dict[str, Any] = {"dest": spec.name, "help": spec.help, "default": None}
        if spec.kind is bool and spec.nullable:
            kw["action"] = argparse.BooleanOptionalAction
        elif spec.kind is bool:  # a flag that switches the default off (--no-hflip) or on (--test-each-phase)
            if spec.default:
                flag, kw["help"] = f"--no-{spec.name.replace('_', '-')}", f"turn off (on by default): {spec.help}"
            kw["action"] = "store_false" if spec.default else "store_true"
        elif spec.kind in (int, float):
            kw["type"] = _number(spec.kind, spec.words)
        kw.update({k: v for k, v in spec.cli.items() if k != "skip"})
        p.add_argument(flag, **kw)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    add_config_options(p)
    p.add_argument("--config", help="YAML file of options (flags given here win over it)")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="DIR",
        help="continue a stopped run or comparison in DIR with the options saved there (bare --resume: the latest "
        "unfinished one in runs/, or the one in --out)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def _add_overwrite_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run (or comparison) that --out holds instead of refusing"
    )


def _add_cache_commands(sub: Any) -> None:
    cache = sub.add_parser("cache", help="list or clear the image and feature caches (THAWLINE_CACHE_MAX_GB caps them)")
    csub = cache.add_subparsers(dest="cache_command", required=True)
    where = "cache folder (default: THAWLINE_CACHE_DIR, else ~/.cache/thawline)"
    p = csub.add_parser("ls", help="each entry: kind, size, last used and what it is for")
    p.add_argument("--cache-dir", dest="cache_dir", type=Path, help=where)
    p.set_defaults(func=cmd_cache_ls)
    p = csub.add_parser("clear", help="remove cache entries that no run is using")
    p.add_argument("--older-than", dest="older_than", type=float, metavar="DAYS", help="only those unused for DAYS")
    p.add_argument("--cache-dir", dest="cache_dir", type=Path, help=where)
    p.set_defaults(func=cmd_cache_clear)


def _add_tta(p: argparse.ArgumentParser) -> None:
    help_ = "average each image's probabilities with its mirror image's (runs trained with flips)"
    p.add_argument("--tta", action="store_true", help=help_)


def _add_run_commands(sub: Any) -> None:
    """evaluate, predict and export: commands that read a finished run folder."""
    p = sub.add_parser("evaluate", help="accuracy, per-class P/R/F1 and confusion of a run on a split or folder")
    p.add_argument("run", help="run folder (or its best.pt/last.pt)")
    p.add_argument("--split", help="test | val | train | DIR of class sub-folders (default: test, else val)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--batch-size", type=int, dest="batch_size", default=64)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    _add_tta(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k labels for image files and folders")
    p.add_argument("run", help="run folder (or its best.pt/last.pt)")
    p.add_argument("paths", nargs="+", help="image files and folders (searched recursively)")
    p.add_argument("--top-k", type=int, dest="top_k", default=3)
    p.add_argument("--format", default="table", choices=("table", "csv", "json"))
    p.add_argument("--batch-size", type=int, dest="batch_size", default=32)
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    _add_tta(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a run to ONNX, checked against PyTorch in onnxruntime")
    p.add_argument("run", help="run folder (or its best.pt/last.pt)")
    p.add_argument("--format", default="onnx", choices=("onnx",))
    p.add_argument("--dynamic-batch", action="store_true", dest="dynamic_batch", help="any batch size at run time")
    p.add_argument("--out", help="ONNX file to write (default RUN/model.onnx; preprocessing.json goes beside it)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.set_defaults(func=cmd_export)


def _add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="train several strategies side by side and rank them")
    _add_train_options(p)
    _add_overwrite_option(p)
    p.add_argument(
        "--strategies", help="comma-separated strategy names (default: all seven, see `thawline strategies`)"
    )
    p.add_argument("--seeds", type=int, default=1, help="train every strategy with N seeds; rank by mean ± std")
    p.add_argument(
        "--halving", action="store_true",
        help="successive halving: all train to a first rung, the best third continues (and the strategy predicted "
        "best), until the whole budget",
    )  # fmt: skip
    p.add_argument(
        "--advise", action="store_true",
        help="first predict the ranking from frozen-feature probes (seconds) and skip the strategies it ranks far "
        "behind (scratch, unless the pretrained features barely help or there are >= 1000 images per class)",
    )  # fmt: skip
    p.add_argument(
        "--models", help="comma-separated timm models: every strategy on every model (OUT/<model>/<strategy>), "
        "one table ranks all (model, strategy) pairs",
    )  # fmt: skip
    p.add_argument(
        "--shift-test", dest="shift_test", metavar="DIR",
        help="after training, evaluate each strategy's best weights on every shifted set in DIR "
        "(`thawline data shift`): shift.json per run, shifted acc and shift gap in the table",
    )  # fmt: skip
    p.add_argument(
        "--folds", type=int, metavar="K",
        help="K-fold cross-validation (5 is usual): train and val pooled, each strategy trained once per fold; "
        "ranked by out-of-fold accuracy, and the answer is an ensemble of strategies when it beats the best one",
    )  # fmt: skip
    p.add_argument(
        "--race", action="store_true",
        help="with --folds: after each fold (from the second) a strategy clearly behind the leader stops",
    )  # fmt: skip
    p.add_argument(
        "--refit", action="store_true",
        help="with --folds: train the best single strategy once more on train and val pooled, to the mean best "
        "epoch of its folds, into OUT/<strategy>/refit: one model instead of the answer's K per strategy",
    )  # fmt: skip
    p.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="train N trials at once, each in its own process on this machine (on CUDA one GPU each); the runs "
        "equal those of --jobs 1 (default: one after another)",
    )  # fmt: skip
    p.add_argument(
        "--trials-per-gpu", dest="trials_per_gpu", type=int, default=1, metavar="M",
        help="with --jobs on CUDA: M workers share each GPU (packs small trainings; default 1)",
    )  # fmt: skip
    p.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help="train the trials as tasks on a Ray cluster (pip install 'thawline[ray]'): ADDRESS, else RAY_ADDRESS "
        "or a new local one; run folders and data on storage every node sees; the runs equal those of --jobs 1",
    )  # fmt: skip
    p.add_argument(
        "--gpus-per-trial", dest="gpus_per_trial", type=float, metavar="G",
        help="with --ray: the GPUs each trial asks for (0.5 puts two on a GPU; default 1 on CUDA, else 0)",
    )  # fmt: skip
    p.add_argument(
        "--cpus-per-trial", dest="cpus_per_trial", type=float, metavar="C",
        help="with --ray: the CPUs each trial asks for (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--retries", type=int, default=DEFAULT_RETRIES, metavar="R",
        help="a trial whose worker dies (killed, out of memory, node lost) resumes from its last checkpoint up to "
        f"R times, then is reported failed and the others are ranked (default {DEFAULT_RETRIES})",
    )  # fmt: skip
    p.add_argument(
        "--dry-run", dest="dry_run", action="store_true",
        help="print the plan (trials, phases, steps, images, cached phases) and how long it will take, timed here "
        "on a few random batches; nothing is trained or written",
    )  # fmt: skip
    p.set_defaults(func=cmd_compare)


def installed_version() -> str:
    """The installed distribution's version (the wheel's or the editable install's metadata); the package's own
    `__version__` when thawline runs from a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("thawline")
    except PackageNotFoundError:
        from thawline import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thawline", description="Compare fine-tuning strategies for image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one strategy into a run folder")
    _add_train_options(p)
    _add_overwrite_option(p)
    p.add_argument("--strategy", help="strategy name (see `thawline strategies`)")
    p.set_defaults(func=cmd_train)

    _add_compare_parser(sub)

    p = sub.add_parser("advise", help="predict the strategies' ranking in seconds from frozen-feature probes")
    add_config_options(p)
    p.add_argument("--config", help="YAML file of options (flags given here win over it)")
    p.add_argument("--max-train", type=int, dest="max_train", default=2000, help="train images probed (stratified)")
    p.add_argument("--max-val", type=int, dest="max_val", default=1000, help="val images probed (stratified)")
    p.add_argument("--quiet", action="store_true", help="only the ranking line")
    p.set_defaults(func=cmd_advise)

    p = sub.add_parser("strategies", help="list the registered strategies and their phases")
    p.add_argument("--strategies-file", dest="strategies_file")
    p.set_defaults(func=cmd_strategies)

    p = sub.add_parser("report", help="(re)build report.html from a run or compare folder")
    p.add_argument("run")
    p.set_defaults(func=cmd_report)

    data = sub.add_parser("data", help="prepare the embedded data set, check a folder, or write shifted copies")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("prepare", help="write the embedded data set as an ImageFolder tree")
    p.add_argument("dataset", help="fashion-mnist")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, dest="per_class")
    p.add_argument("--val-per-class", type=int, dest="val_per_class")
    p.add_argument("--test-per-class", type=int, dest="test_per_class")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_prepare)
    p = dsub.add_parser("shift", help="write corrupted copies of a split (noise, blur, contrast, jpeg, rotate)")
    p.add_argument("dir", help="data folder holding the split (DIR/test/<class>/<images>)")
    p.add_argument("--out", required=True, help="folder to write: OUT/<kind>-<severity>/<class>/<file>.png")
    p.add_argument("--split", default="test", help="which split to shift (default test)")
    p.add_argument("--kinds", help="comma-separated corruptions (default: noise,blur,contrast,jpeg,rotate)")
    p.add_argument("--severities", help="comma-separated severities 1..5 (default 1,3,5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image random draws")
    p.set_defaults(func=cmd_data_shift)
    p = dsub.add_parser("check", help="find unreadable files, imbalance, duplicates and leakage")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_check)

    _add_run_commands(sub)
    _add_cache_commands(sub)
    p = sub.add_parser("lr-find", help="LR range test for a strategy's first phase (plot + suggested --lr)")
    add_config_options(p)
    p.add_argument("--strategy", help="whose first phase is tested (default two-phase)")
    p.add_argument("--config", help="YAML file of options (flags given here win over it)")
    p.add_argument("--start-lr", type=float, dest="start_lr", default=1e-7)
    p.add_argument("--end-lr", type=float, dest="end_lr", default=10.0)
    p.add_argument("--steps", type=int, default=100, help="number of LR steps (minibatches)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("sweep", help="Optuna search over strategy, LRs, epoch split, partial fraction, layer decay")
    _add_train_options(p)
    p.add_argument(
        "--strategies",
        help="comma-separated strategies to search (default: head-only,two-phase,layer-wise,partial,gradual,full)",
    )
    p.add_argument("--trials", type=int, default=20, help="total finished trials (all workers); rerun to resume")
    p.add_argument("--storage", help="Optuna RDB URL (default sqlite:///OUT/sweep.db; postgresql://... to share)")
    p.add_argument("--study", help="study name (default thawline-sweep)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--verbose", action="store_true", help="print every trial's epoch lines")
    p.set_defaults(func=cmd_sweep)
    return parser
