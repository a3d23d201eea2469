"""Command line: thin argparse subcommands over the Python API. Bad input ends in one line, never a traceback."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from thawline.core.config import PLACE_OPTIONS, TrainConfig, load_yaml_mapping, make_config, option_specs
from thawline.core.errors import ThawlineError

# The subcommands import what they run inside their functions: `thawline --help`, a bad flag and `thawline cache ls`
# answer without loading torch, timm, matplotlib or PIL.

# `thawline compare` with no arguments: the embedded data and model, sized to finish in minutes on 2 CPU cores.
DEMO_DATA = "data/fashion-mnist-demo"
DEMO_PREPARE = {"per_class": 100, "val_per_class": 50, "test_per_class": 100}
# Seven strategies at 112 px for 6 epochs took ~13 min here, at 96 px and 4 epochs 8-9 min (head solver and the
# current recipes included); 80 px keeps `make demo` under 7 min (Fashion-MNIST's images are 28 px).
DEMO_OPTIONS = {"img_size": 80, "epochs": 4}


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


def _config_from_args(args: argparse.Namespace, **extra: Any):
    overrides = {spec.name: getattr(args, spec.name, None) for spec in option_specs()}
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return make_config(overrides, args.config)


def _resume_overrides(args: argparse.Namespace, saved: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The flags given with `--resume DIR`: place options (--workers, --device, ...) apply; any other must equal the
    value DIR was started with (`saved`: its config.yaml or compare.yaml), else one line naming it."""
    from thawline.training.runfolder import defining_options, same_option, show

    if args.config:
        raise ThawlineError(
            f"--config cannot be combined with --resume {folder}: it continues with the options saved there"
        )
    if args.out is not None and Path(args.out).resolve() != folder.resolve():
        raise ThawlineError(f"--out {args.out}: --resume {folder} continues in {folder}; drop --out")
    started = defining_options(saved)
    overrides: dict[str, Any] = {}
    for spec in option_specs():
        given = getattr(args, spec.name, None)
        if given is None or spec.name == "out":
            continue
        if spec.name in PLACE_OPTIONS:
            overrides[spec.name] = given
        elif not same_option(spec.name, started.get(spec.name), given):
            store_flag = spec.kind is bool and not spec.nullable  # --no-hflip, --test-each-phase: no value
            flag = f"--no-{spec.flag[2:]}" if store_flag and spec.default else spec.flag
            given_text = flag if store_flag else f"{flag} {show(given)}"
            raise ThawlineError(
                f"{given_text} differs from the {spec.name} '{folder}' was started with "
                f"({show(started.get(spec.name))}); drop it to resume, or pass a new --out"
            )
    return overrides


def _resumed_run_config(args: argparse.Namespace):
    """`train --resume RUN_DIR`: the run's own config.yaml (plus place flags), continuing in RUN_DIR."""
    folder = Path(args.resume)
    saved_file = folder / "config.yaml"
    if not saved_file.is_file():
        compare_folder = (folder / "compare.yaml").is_file()
        hint = "; resume a compare folder with `thawline compare --resume`" if compare_folder else ""
        raise ThawlineError(f"--resume {folder}: no config.yaml there, so it is not a run folder{hint}")
    saved = load_yaml_mapping(str(saved_file))
    overrides = _resume_overrides(args, saved, folder)
    if saved.get("lr_auto"):
        overrides["lr"] = "auto"  # the resume reads the LR the range test found from the run's lr_find.json
    return make_config({**overrides, "out": str(folder)}, str(saved_file))


def _resumed_compare(args: argparse.Namespace):
    """`compare --resume DIR`: the comparison's compare.yaml (options and strategies), continuing in DIR."""
    folder = Path(args.resume)
    path = folder / "compare.yaml"
    if not path.is_file():
        hint = "; resume a run folder with `thawline train --resume`" if (folder / "config.yaml").is_file() else ""
        raise ThawlineError(f"--resume {folder}: no compare.yaml there, so it is not a compare folder{hint}")
    doc = load_yaml_mapping(str(path))
    saved, names = doc.get("config"), doc.get("strategies")
    if not isinstance(saved, dict) or not isinstance(names, list):
        raise ThawlineError(f"'{path}' holds no config and strategies; it is not a thawline compare.yaml")
    overrides = _resume_overrides(args, saved, folder)
    if args.strategies and list(args.strategies) != names:
        raise ThawlineError(
            f"--strategies {','.join(args.strategies)} differs from {','.join(names)} that {folder} was started "
            "with; drop it to resume, or pass a new --out"
        )
    options = {k: v for k, v in saved.items() if k != "out"}
    for key in ("seeds", "halving", "advise", "models", "shift_test"):  # how the comparison trains: as it was started
        setattr(args, key, doc.get(key, getattr(args, key)))
    return make_config({**options, **overrides, "out": str(folder)}), names


def _needs_folder(args: argparse.Namespace, out: str | None) -> None:
    if args.resume is True and not out:
        raise ThawlineError(f"--resume needs the folder: {args.command} --resume DIR (or --resume --out DIR)")


def _find_bare_resume(args: argparse.Namespace) -> None:
    """A bare `--resume` (no folder, no --out, no --config): the latest unfinished run of this command in runs/."""
    from thawline.training.runfolder import RUNS_PARENT, latest_unfinished

    if args.resume and getattr(args, "overwrite", False):  # any form of --resume: checked before any search
        raise ThawlineError("--resume continues a run and --overwrite replaces it: pass one of them")
    if args.resume is True and args.out is None and args.config is None:
        folder = latest_unfinished(args.command, RUNS_PARENT)
        what = "comparison" if args.command == "compare" else "run"
        print(f"resuming {folder} (the latest unfinished {what} in {RUNS_PARENT}/)", file=sys.stderr, flush=True)
        args.resume = str(folder)


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
    test = f", test acc {s['test_acc']:.2%}" if s.get("test_acc") is not None else ""
    print(f"best val acc {s['best_val_acc']:.2%} (epoch {s['best_epoch']}){test} in {s['wall_time_s']:.0f}s")
    _report(result.run_dir)
    print(result.run_dir)
    return 0


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
    result = compare(
        config, strategies, config.out, resume=bool(args.resume), quiet=args.quiet, seeds=args.seeds,
        halving=args.halving, advise=args.advise, models=args.models, shift_test=args.shift_test,
        overwrite=args.overwrite,
    )  # fmt: skip
    from thawline.training import distributed

    if not distributed.is_main():
        return 0
    if args.quiet:  # otherwise the table and the verdict line under it name the winner
        print(f"winner: {result.winner}")
    _report(result.out_dir)
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
    from thawline.data.check import check_folder

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
    p.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thawline", description="Compare fine-tuning strategies for image classifiers."
    )
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


def _resume_hint(args: argparse.Namespace, interrupt: KeyboardInterrupt) -> str:
    """How to continue after Ctrl-C: the folder to resume when the run (or comparison) had written one."""
    import shlex

    command = getattr(interrupt, "command", None)
    if command is not None and command == args.command:
        return f"; continue with `{interrupt.resume_command}`"  # type: ignore[attr-defined]
    if args.command == "sweep":
        return "; rerun the same command to continue the study"
    if args.command in ("train", "compare") and isinstance(getattr(args, "resume", None), str):
        return f"; continue with `thawline {args.command} --resume {shlex.quote(args.resume)}`"
    if args.command in ("train", "compare"):
        return " before training started; rerun the command"
    return ""


_LINE_BREAKS = re.compile(r"([\n\r\t])")


def terminal_text(text: str) -> str:
    """`text` safe for a terminal: control characters (ESC sequences that set the title, move the cursor, hide or
    recolour text) and bidi overrides as their escapes (files.printable); line breaks, carriage returns (tqdm's bar)
    and tabs stay. Text already escaped is left as it is (its backslashes are not control characters)."""
    from thawline.data.files import printable

    parts = _LINE_BREAKS.split(text)
    try:
        return "".join(part if i % 2 else printable(part) for i, part in enumerate(parts))
    except UnicodeEncodeError:  # a lone surrogate that surrogateescape cannot encode: U+FFFD, as for other bad bytes
        return terminal_text(re.sub("[\ud800-\udfff]", "\ufffd", text))


class _TerminalStream:
    """sys.stdout/sys.stderr for the length of a command: every write goes through `terminal_text`, so no class,
    file or folder name printed anywhere (ours, a library's warning, argparse) reaches the terminal raw. thawline
    itself writes no escape sequences (no colours; its tqdm bars are never nested, so only \r moves the cursor)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(terminal_text(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, buffer: the real stream's
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _TerminalStream(sys.stdout), _TerminalStream(sys.stderr)
    try:
        return _main(argv)
    finally:
        # back to the streams main was given (each unless something else replaced it meanwhile)
        if isinstance(sys.stdout, _TerminalStream):
            sys.stdout = streams[0]
        if isinstance(sys.stderr, _TerminalStream):
            sys.stderr = streams[1]


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compare" and getattr(args, "strategies", None):
        args.strategies = args.strategies.split(",")
    try:
        return args.func(args)
    except ThawlineError as e:
        print(f"thawline: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2: bad input; 1: a file could not be written (thawline.core.atomic)
    except KeyboardInterrupt as e:
        print(f"thawline: interrupted{_resume_hint(args, e)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)
    finally:
        if "thawline.training.distributed" in sys.modules:  # leave the torchrun process group cleanly
            sys.modules["thawline.training.distributed"].shutdown()


if __name__ == "__main__":
    sys.exit(main())
