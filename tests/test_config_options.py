"""An option is declared once (a `TrainConfig` field with `option(...)`): its CLI flag, YAML key, type check and
config.yaml entry all follow from that declaration."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

import thawline
from thawline.cli.parser import add_config_options, build_parser
from thawline.core.config import TrainConfig, make_config, option, option_specs
from thawline.core.errors import ThawlineError


@dataclass
class ConfigWithNewOptions(TrainConfig):
    """What a developer adding options writes: one field each, nothing else."""

    restarts: int = option(2, "cosine restarts per phase (an option added by this test)")
    mixup: bool = option(True, "mixup augmentation (an option added by this test)")


def parser_for(cls: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_config_options(parser, cls)
    return parser


def test_a_new_option_is_a_cli_flag_with_its_type_and_help() -> None:
    parser = parser_for(ConfigWithNewOptions)
    help_text = " ".join(parser.format_help().split())
    assert "--restarts RESTARTS cosine restarts per phase (an option added by this test)" in help_text
    assert "--no-mixup turn off (on by default): mixup augmentation" in help_text
    args = parser.parse_args(["--restarts", "5", "--no-mixup"])
    assert args.restarts == 5 and args.mixup is False
    unset = parser.parse_args([])
    assert unset.restarts is None and unset.mixup is None  # unset flags never override YAML or presets
    with pytest.raises(SystemExit):
        parser.parse_args(["--restarts", "five"])


def test_a_new_option_is_a_yaml_key_with_its_type_checked(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("restarts: '7'\nmixup: false\n")  # YAML 1.1 reads '7' as a string: coerced to int
    config = make_config({}, str(cfg_file), cls=ConfigWithNewOptions)
    assert config.restarts == 7 and config.mixup is False
    assert make_config({"restarts": 9}, str(cfg_file), cls=ConfigWithNewOptions).restarts == 9  # flags win
    cfg_file.write_text("restarts: 2.5\n")
    with pytest.raises(ThawlineError, match="option restarts: 2.5 is not a valid int"):
        make_config({}, str(cfg_file), cls=ConfigWithNewOptions)
    cfg_file.write_text("restarts: 3\n")
    with pytest.raises(ThawlineError, match="unknown option 'restarts'"):
        make_config({}, str(cfg_file))  # the plain TrainConfig does not know it


def test_a_new_option_is_saved_in_config_yaml(image_folder: Path, tmp_path: Path) -> None:
    base = tiny_config(image_folder, strategy="head-only", epochs=1).to_dict()
    config = make_config({**base, "restarts": 4}, cls=ConfigWithNewOptions)
    out = tmp_path / "run"
    thawline.train(config, run_dir=out, quiet=True)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["restarts"] == 4 and saved["mixup"] is True


@pytest.mark.parametrize("command", ["train", "compare", "lr-find", "sweep"])
def test_every_declared_option_is_a_flag_of_every_training_command(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
    flags = {s for action in sub.choices[command]._actions for s in action.option_strings}
    for spec in option_specs():
        if spec.cli.get("skip"):
            continue
        expected = f"--no-{spec.name.replace('_', '-')}" if spec.kind is bool and spec.default is True else spec.flag
        assert expected in flags, (command, spec.name)
