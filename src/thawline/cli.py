"""Command line: thin argparse subcommands over the Python API. Bad input ends in one line, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from thawline.errors import ThawlineError

# `thawline compare` with no arguments: the embedded data and model, sized to finish in minutes on 2 CPU cores.
DEMO_DATA = "data/fashion-mnist-demo"
DEMO_PREPARE = {"per_class": 100, "val_per_class": 50, "test_per_class": 100}
DEMO_OPTIONS = {"img_size": 112, "epochs": 6}


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="ImageFolder root with train/ and val/ (test/ optional)")
    p.add_argument("--model", help="timm model name (default tf_efficientnet_lite0)")
    p.add_argument("--weights", help="default (embedded EfficientNet-Lite0) | hub | none | PATH")
    p.add_argument("--epochs", type=int, help="total epoch budget, split across the strategy's phases")
    p.add_argument("--img-size", type=int, dest="img_size", help="input resolution (default: the model's)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--lr", type=float, help="LR of the first phase; later phases keep the strategy's ratios")
    p.add_argument("--seed", type=int)
    p.add_argument("--preset", help="default | seed (Adam, plain CE, constant LR, batch 32, 224 px)")
    p.add_argument("--optimizer", help="adamw | adam | sgd")
    p.add_argument("--weight-decay", type=float, dest="weight_decay")
    p.add_argument("--label-smoothing", type=float, dest="label_smoothing")
    p.add_argument("--schedule", help="cosine | constant (per phase, after warm-up)")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--max-per-class", type=int, dest="max_per_class", help="cap train images per class")
    p.add_argument("--no-hflip", action="store_false", dest="hflip", default=None, help="no flip augmentation")
    p.add_argument(
        "--no-feature-cache",
        action="store_false",
        dest="feature_cache",
        default=None,
        help="always run the whole model (no cached frozen-prefix features)",
    )
    p.add_argument("--cache-dir", dest="cache_dir", help="image/feature cache folder (default ~/.cache/thawline)")
    p.add_argument("--workers", type=int, help="processes that decode images (default: CPU count)")
    p.add_argument("--strategies-file", dest="strategies_file", help="YAML file with your own strategies")
    p.add_argument("--config", help="YAML file of options (flags given here win over it)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


TRAIN_KEYS = (
    "data",
    "model",
    "weights",
    "epochs",
    "img_size",
    "batch_size",
    "lr",
    "seed",
    "preset",
    "optimizer",
    "weight_decay",
    "label_smoothing",
    "schedule",
    "device",
    "max_per_class",
    "hflip",
    "feature_cache",
    "cache_dir",
    "workers",
    "strategies_file",
    "out",
)


def _config_from_args(args: argparse.Namespace, **extra: Any):
    from thawline.config import make_config

    overrides = {k: getattr(args, k, None) for k in TRAIN_KEYS}
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return make_config(overrides, args.config)


def cmd_train(args: argparse.Namespace) -> int:
    from thawline.trainer import train

    config = _config_from_args(args, strategy=args.strategy)
    result = train(config, resume=args.resume, quiet=args.quiet)
    s = result.summary
    test = f", test acc {s['test_acc']:.2%}" if s.get("test_acc") is not None else ""
    print(f"best val acc {s['best_val_acc']:.2%} (epoch {s['best_epoch']}){test} in {s['wall_time_s']:.0f}s")
    _report(result.run_dir)
    print(result.run_dir)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from thawline.comparison import DEFAULT_STRATEGIES, compare

    if args.data is None and args.config is None:
        args.data = _prepare_demo(args.quiet)
        for k, v in DEMO_OPTIONS.items():
            if getattr(args, k, None) is None:
                setattr(args, k, v)
    config = _config_from_args(args)
    result = compare(
        config, args.strategies or list(DEFAULT_STRATEGIES), args.out, resume=args.resume, quiet=args.quiet
    )
    print(f"winner: {result.winner}")
    _report(result.out_dir)
    return 0


def _prepare_demo(quiet: bool) -> str:
    from thawline.fashion_mnist import prepare_fashion_mnist

    if not quiet:
        print(f"no --data: using the embedded Fashion-MNIST subset in {DEMO_DATA}", flush=True)
    prepare_fashion_mnist(DEMO_DATA, **DEMO_PREPARE)
    return DEMO_DATA


def _report(run_dir: Path) -> None:
    try:
        from thawline.report import build_report
    except ImportError:  # report module not installed in this build
        return
    path = build_report(run_dir)
    print(f"report: {path}")


def cmd_report(args: argparse.Namespace) -> int:
    from thawline.report import build_report

    print(build_report(Path(args.run)))
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    from thawline.strategies import all_strategies, describe

    for name, s in all_strategies(args.strategies_file).items():
        print(f"{name:<12} {s.description}")
        print(f"{'':<12} {describe(s)}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from thawline.fashion_mnist import prepare_fashion_mnist

    if args.dataset != "fashion-mnist":
        raise ThawlineError(f"unknown dataset '{args.dataset}'; the embedded dataset is fashion-mnist")
    manifest = prepare_fashion_mnist(
        args.out,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        seed=args.seed,
    )
    counts = manifest.get("counts", manifest)
    print(f"{args.out}: {counts}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from thawline.datacheck import check_folder

    return check_folder(args.dir, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thawline", description="Compare fine-tuning strategies for image classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one strategy into a run folder")
    _add_train_options(p)
    p.add_argument("--strategy", help="strategy name (see `thawline strategies`)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several strategies side by side and rank them")
    _add_train_options(p)
    p.add_argument(
        "--strategies", help="comma-separated strategy names (default: head-only,two-phase,partial,full,scratch)"
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("strategies", help="list the registered strategies and their phases")
    p.add_argument("--strategies-file", dest="strategies_file")
    p.set_defaults(func=cmd_strategies)

    p = sub.add_parser("report", help="(re)build report.html from a run or compare folder")
    p.add_argument("run")
    p.set_defaults(func=cmd_report)

    data = sub.add_parser("data", help="prepare the embedded data set or check a folder")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("prepare", help="write the embedded data set as an ImageFolder tree")
    p.add_argument("dataset", help="fashion-mnist")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, dest="per_class")
    p.add_argument("--val-per-class", type=int, dest="val_per_class")
    p.add_argument("--test-per-class", type=int, dest="test_per_class")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_prepare)
    p = dsub.add_parser("check", help="find unreadable files, imbalance, duplicates and leakage")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compare" and getattr(args, "strategies", None):
        args.strategies = args.strategies.split(",")
    try:
        return args.func(args)
    except ThawlineError as e:
        print(f"thawline: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thawline: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
