"""The subcommands' handlers (`cmd_*`): each turns its parsed flags into one API call and prints the outcome;
train, compare and sweep then write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawline.cli.options import (
    _config_from_args,
    _find_bare_resume,
    _needs_folder,
    _resumed_compare,
    _resumed_run_config,
)
from thawline.core.errors import ThawlineError
from thawline.core.runformat import SUMMARY

if TYPE_CHECKING:
    from thawline.core.config import TrainConfig

# The subcommands import what they run inside their functions: `thawline --help`, a bad flag and `thawline cache ls`
# answer without loading torch, timm, matplotlib or PIL.

# `thawline compare` with no arguments: the embedded data and model, sized to finish in minutes on 2 CPU cores.
DEMO_DATA = "data/fashion-mnist-demo"
DEMO_PREPARE = {"per_class": 100, "val_per_class": 50, "test_per_class": 100}
# Seven strategies at 112 px for 6 epochs took ~13 min here, at 96 px and 4 epochs 8-9 min (head solver and the
# current recipes included); 80 px keeps `make demo` under 7 min (Fashion-MNIST's images are 28 px).
DEMO_OPTIONS = {"img_size": 80, "epochs": 4}


def cmd_train(args: argparse.Namespace) -> int:
    from thawline.training.trainer import train

    _find_bare_resume(args)
    if isinstance(args.resume, str):
        config = _resumed_run_config(args)
    else:
        config = _config_from_args(args, strategy=args.strategy)
        _needs_folder(args, config.out)
    result = train(config, resume=bool(args.resume), quiet=args.quiet, overwrite=args.overwrite)
    from thawline.training import distributed

    if not distributed.is_main():  # under torchrun rank 0 reports
        return 0
    s = result.summary
    test = f", test acc {s[SUMMARY.test_acc]:.2%}" if s.get(SUMMARY.test_acc) is not None else ""
    print(
        f"best val acc {s[SUMMARY.best_val_acc]:.2%} (epoch {s[SUMMARY.best_epoch]}){test} "
        f"in {s[SUMMARY.wall_time_s]:.0f}s"
    )
    _report(result.run_dir)
    print(result.run_dir)
    return 0


def compare_options(args: argparse.Namespace) -> dict[str, Any]:
    """compare's keyword options from the parsed flags: every `CompareOptions` field the parser has a flag of (the
    flag's dest is the field's name), so an option is declared once, in `CompareOptions`, and its flag once."""
    from dataclasses import fields

    from thawline.comparing import CompareOptions

    given = {f.name: getattr(args, f.name) for f in fields(CompareOptions) if hasattr(args, f.name)}
    given["resume"] = bool(args.resume)  # --resume [DIR]: the folder itself is read before (_resumed_compare)
    for positional in ("strategies", "out"):  # compare's arguments: the resolved strategy list and config.out
        given.pop(positional, None)
    return given


def cmd_compare(args: argparse.Namespace) -> int:
    from thawline.comparing.comparison import DEFAULT_STRATEGIES, compare

    _find_bare_resume(args)
    if isinstance(args.resume, str):
        config, strategies = _resumed_compare(args)
    else:
        if args.data is None and args.config is None:
            args.data = _prepare_demo(args.quiet)
            for k, v in DEMO_OPTIONS.items():
                if getattr(args, k, None) is None:
                    setattr(args, k, v)
        config = _config_from_args(args)
        strategies = args.strategies or list(DEFAULT_STRATEGIES)
        _needs_folder(args, config.out)
    if args.dry_run:
        return _dry_run(args, config, strategies)
    result = compare(config, strategies, config.out, **compare_options(args))
    from thawline.training import distributed

    if not distributed.is_main():
        return 0
    if args.quiet:  # otherwise the table and the verdict line under it name the winner
        print(f"winner: {result.winner}")
    _report(result.out_dir)
    return 0


def _dry_run(args: argparse.Namespace, config: TrainConfig, strategies: str | list[str]) -> int:
    from thawline.comparing.dryrun import format_plan, plan_compare
    from thawline.comparing.options import CompareOptions

    options = CompareOptions.of(
        strategies, config.out, models=args.models, seeds=args.seeds, halving=args.halving, advise=args.advise,
        shift_test=args.shift_test, folds=args.folds, race=args.race, jobs=args.jobs, resume=bool(args.resume),
        overwrite=args.overwrite,
    )  # fmt: skip
    print(format_plan(plan_compare(config, options)), flush=True)
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from thawline.comparing.advise import advise

    if args.data is None and args.config is None:
        args.data = _prepare_demo(args.quiet)
    config = _config_from_args(args)
    result = advise(config, config.out, max_train=args.max_train, max_val=args.max_val, quiet=args.quiet)
    if args.quiet:
        print(f"predicted: {', '.join(result.ranking)}; partial as {result.recommendation['partial']}")
    print(f"wrote {result.out_dir / 'advise.json'} and {result.out_dir / 'advise.html'} in {result.seconds:.1f} s")
    return 0


def _prepare_demo(quiet: bool) -> str:
    from thawline.data.fashion_mnist import prepare_fashion_mnist

    if not quiet:
        print(f"no --data: using the embedded Fashion-MNIST subset in {DEMO_DATA}", flush=True)
    from thawline.training import distributed

    distributed.init()
    with distributed.local_main_first():
        prepare_fashion_mnist(DEMO_DATA, **DEMO_PREPARE)
    return DEMO_DATA


def _report(run_dir: Path) -> None:
    from thawline.report.build import build_report

    path = build_report(run_dir)
    print(f"report: {path}")


def cmd_report(args: argparse.Namespace) -> int:
    from thawline.report.build import build_report

    print(build_report(Path(args.run)))
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    from thawline.training.strategies import all_strategies, describe

    registry = all_strategies(args.strategies_file)
    width = max(12, *(len(name) + 1 for name in registry))
    for name, s in registry.items():
        print(f"{name:<{width}} {s.description}")
        print(f"{'':<{width}} {describe(s)}")
        if s.reference:
            print(f"{'':<{width}} paper: {s.reference}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from thawline.data.fashion_mnist import prepare_fashion_mnist

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


def cmd_data_shift(args: argparse.Namespace) -> int:
    from thawline.data.shift import format_manifest, write_shifted

    manifest = write_shifted(
        args.dir, args.out, split=args.split, kinds=args.kinds, severities=args.severities, seed=args.seed
    )
    print(format_manifest(manifest, args.out))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from thawline.data.check_format import check_folder

    return check_folder(args.dir, as_json=args.json)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from thawline.deploy.evaluate import evaluate_run, format_evaluation

    ev = evaluate_run(
        args.run, args.split, which=args.checkpoint, batch_size=args.batch_size, device=args.device, tta=args.tta
    )
    print(format_evaluation(ev))
    for path in ev.files:
        print(f"wrote {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from thawline.deploy.predict import format_predictions, predict

    results = predict(
        args.run,
        args.paths,
        top_k=args.top_k,
        batch_size=args.batch_size,
        which=args.checkpoint,
        device=args.device,
        tta=args.tta,
    )
    text = format_predictions(results, args.format, args.top_k)
    if text:
        print(text)
    ok = sum(r.ok for r in results)
    failed = sum(r.failed for r in results)
    skipped = sum(r.skipped for r in results)
    if not ok:
        print(
            f"thawline: error: none of the {len(results)} input(s) could be predicted (reasons above)", file=sys.stderr
        )
        return 1
    also = f", {skipped} skipped (not image files, listed above)" if skipped else ""
    print(f"predicted {ok} image(s), {failed} failed{also}", file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from thawline.deploy.export import export_onnx

    # The parity check runs before the file is put in place: a failed check is an error and writes nothing.
    result = export_onnx(args.run, args.out, dynamic_batch=args.dynamic_batch, which=args.checkpoint, opset=args.opset)
    print(f"wrote {result.onnx_path} and {result.preprocessing_path}")
    batches = ", ".join(str(b) for b in result.batch_sizes)
    line = f"onnxruntime vs PyTorch: max abs logit difference {result.max_abs_diff:.3g} on {result.inputs}"
    print(f"{line} (batch sizes {batches})")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from thawline.training.lrfind import lr_find
    from thawline.training.runfolder import next_run_dir

    config = _config_from_args(args, strategy=args.strategy)
    out = Path(config.out) if config.out else next_run_dir(Path("runs"), "lr-find")
    result = lr_find(config, out=out, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, quiet=args.quiet)
    stop = f", stopped at {result.lrs[-1]:.2e} (loss diverged)" if result.stopped_early else ""
    print(
        f"lr-find {config.model} / {result.info['strategy']} phase 1 ({result.info['phase']['train']}): "
        f"{len(result.lrs)} steps{stop}; min smoothed loss at lr {result.min_loss_lr:.2e}"
    )
    others = f"steepest {result.steepest_lr:.2e}, " if result.steepest_lr else ""
    print(
        f"suggested lr: {result.suggested_lr:.2e} ({result.method}; {others}min/10 {result.min_loss_lr / 10:.2e}); "
        f"use it as --lr {result.suggested_lr:.2g}"
    )
    for path in result.files:
        print(f"wrote {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from thawline.comparing.sweep import DEFAULT_STRATEGIES, sweep

    config = _config_from_args(args)
    strategies = args.strategies.split(",") if args.strategies else list(DEFAULT_STRATEGIES)
    result = sweep(
        config,
        strategies,
        trials=args.trials,
        storage=args.storage,
        study_name=args.study,
        timeout=args.timeout,
        out=args.out,
        quiet=args.quiet,
        verbose=args.verbose,
    )
    _report(result.out_dir)
    return 0


def cmd_cache_ls(args: argparse.Namespace) -> int:
    from thawline.data.cache_admin import format_entries

    print(format_entries(args.cache_dir))
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from thawline.data.cache_admin import clear, format_cleared

    print(format_cleared(*clear(args.cache_dir, args.older_than), args.older_than))
    return 0
