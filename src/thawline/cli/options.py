"""The parsed flags as a config: a fresh one from the flags (over --config), or `--resume DIR` with the options
saved in DIR, the place flags applied and any other flag checked against them; a bare --resume finds the folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from thawline.core.config import PLACE_OPTIONS, load_yaml_mapping, make_config, option_specs
from thawline.core.errors import ThawlineError
from thawline.core.runformat import COMPARE_PLAN, CONFIG, CONFIG_FILE, PLAN


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
    saved_file = folder / CONFIG_FILE
    if not saved_file.is_file():
        compare_folder = (folder / COMPARE_PLAN).is_file()
        hint = "; resume a compare folder with `thawline compare --resume`" if compare_folder else ""
        raise ThawlineError(f"--resume {folder}: no config.yaml there, so it is not a run folder{hint}")
    saved = load_yaml_mapping(str(saved_file))
    overrides = _resume_overrides(args, saved, folder)
    if saved.get(CONFIG.lr_auto):
        overrides["lr"] = "auto"  # the resume reads the LR the range test found from the run's lr_find.json
    return make_config({**overrides, "out": str(folder)}, str(saved_file))


def _resumed_compare(args: argparse.Namespace):
    """`compare --resume DIR`: the comparison's compare.yaml (options and strategies), continuing in DIR."""
    folder = Path(args.resume)
    path = folder / COMPARE_PLAN
    if not path.is_file():
        hint = "; resume a run folder with `thawline train --resume`" if (folder / CONFIG_FILE).is_file() else ""
        raise ThawlineError(f"--resume {folder}: no compare.yaml there, so it is not a compare folder{hint}")
    doc = load_yaml_mapping(str(path))
    saved, names = doc.get(PLAN.config), doc.get(PLAN.strategies)
    if not isinstance(saved, dict) or not isinstance(names, list):
        raise ThawlineError(f"'{path}' holds no config and strategies; it is not a thawline compare.yaml")
    overrides = _resume_overrides(args, saved, folder)
    if args.strategies and list(args.strategies) != names:
        raise ThawlineError(
            f"--strategies {','.join(args.strategies)} differs from {','.join(names)} that {folder} was started "
            "with; drop it to resume, or pass a new --out"
        )
    options = {k: v for k, v in saved.items() if k != "out"}
    # how the comparison trains: as it was started (compare.yaml's keys are the flags' dests)
    for key in (PLAN.seeds, PLAN.halving, PLAN.advise, PLAN.models, PLAN.shift_test, PLAN.folds, PLAN.race):
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
