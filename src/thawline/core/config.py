"""Every option of a run as one dataclass, with presets, YAML load/save and one-line validation errors."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from thawline.core.atomic import write_text_atomic
from thawline.core.errors import ThawlineError, close_matches
from thawline.core.runformat import DERIVED_KEYS

DEFAULT_MODEL = "tf_efficientnet_lite0"
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")


def option(default: Any, help: str, *, words: tuple[str, ...] = (), cli: dict[str, Any] | None = None) -> Any:
    """A `TrainConfig` field declared once: default and help text. The CLI flag, the YAML key and the type check
    are derived from the field (`cli.parser.add_config_options`, `make_config`); `cli` holds the argparse settings that
    the field's type cannot tell (choices, a const, `{"skip": True}` for no flag). `words` are the strings a
    numeric option also accepts (`lr: auto`)."""
    metadata = {"help": help, "words": words, "cli": cli or {}}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """One training run. Each field is one option: a CLI flag (`--img-size`), a YAML key (`img_size`) and a
    `config.yaml` entry. `None` means "derived" (see the help)."""

    data: str | None = option(
        None, "ImageFolder root with train/, val/ and test/ (val and test may be held out of train: --val-split)"
    )
    model: str = option(DEFAULT_MODEL, "timm model name (default tf_efficientnet_lite0)")
    weights: str = option("default", "default (embedded EfficientNet-Lite0) | hub | none | PATH")
    strategy: str = option(
        "two-phase", "strategy name (see `thawline strategies`)", cli={"skip": True}
    )  # train and lr-find: --strategy; compare and sweep: --strategies
    strategies_file: str | None = option(None, "YAML file with your own strategies")
    epochs: int | None = option(None, "total epoch budget, split across the strategy's phases")
    img_size: int | None = option(None, "input resolution (default: the model's)")
    batch_size: int = option(32, "images per optimizer step (the global batch under torchrun)")
    lr: float | str | None = option(
        None,
        "LR of the first phase (later phases keep the strategy's ratios), or auto: the LR range test's pick",
        words=("auto",),
    )
    optimizer: str = option("adamw", "adamw | adam | sgd")
    weight_decay: float = option(0.01, "AdamW/SGD weight decay (not on biases and norm weights)")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy loss")
    schedule: str = option("cosine", "cosine | constant (per phase, after warm-up)")
    warmup_epochs: float = option(0.25, "linear LR warm-up at the start of every phase, in epochs")
    # Small data gives a handful of steps per epoch: epochs then repeat passes over the train set until the run
    # has about this many optimizer steps, so a short budget measures the strategy, not the lack of steps.
    # 150, not 100: on fmnist-20 (200 images, 10 epochs: 70 steps a pass) two passes took full fine-tuning from
    # 68.6% to 73.6% test and partial from 71.6% to 73.2%, for twice the time; 400 steps gave full 76.5%. The
    # embedded demo (128 steps) stays at one pass.
    min_steps: int = option(
        150, "a run takes about this many optimizer steps at least: small data repeats passes (0: the epochs only)"
    )
    head_steps: int = option(
        500,
        "a phase that trains only the head on cached features takes at least this many steps (milliseconds "
        "each), so the head converges before anything thaws (0: the epochs only)",
    )
    # The stepped head fell up to 6 points below a logistic-regression probe on some suite tasks and beat it by up
    # to 7 on others; offering the solved head as well kept head-only within 0.5 of the probe on 12 of 13 (headfit.py).
    head_solver: bool = option(
        True,
        "a head that trains alone to the end of the run (head-only) also gets a solved candidate after its epochs "
        "(L-BFGS logistic regression on the cached features, L2 by cross-validation on train), kept when it "
        "validates at least as well",
    )
    hflip: bool = option(True, "random horizontal flip on train images (the seeds' only augmentation)")
    # fastai's aug_transforms(min_scale=...), timm's --scale: crops drawn per image and pass from the epoch's seed
    # (exact resume); a frozen prefix then runs on every batch (cached features would hold one crop), as in fastai
    min_scale: float = option(
        1.0,
        "random resized crop of each train image, each pass: at least this share of its area, aspect 3/4 to 4/3, "
        "resized back (e.g. 0.35; 1: the whole image, and frozen prefixes train on cached features)",
    )
    drop_rate: float = option(0.0, "dropout before the classifier")
    # TF-ported models (tf_efficientnet_*) carry TF's 0.01, which lets running stats lag far behind the batch stats
    # on a new domain for hundreds of steps, so validation (which uses running stats) collapses after a thaw.
    bn_momentum: float | None = option(
        0.1, "BatchNorm momentum in training stages (PyTorch's 0.1; TF-ported models carry 0.01)"
    )
    seed: int = option(0, "random seed (head init, batch order, dropout)")
    preset: str = option("default", "default | seed (Adam, plain CE, constant LR, batch 32, 224 px) | quality-20min")
    device: str = option("auto", "auto | cpu | cuda")
    channels_last: bool | None = option(None, "channels-last memory format (default on: faster convolutions)")
    amp: bool | None = option(None, "bf16 autocast (default on for CUDA; slower than fp32 on AVX2 CPUs)")
    feature_cache: bool = option(True, "train only the suffix on cached frozen-prefix features when possible")
    cache_dir: str | None = option(None, "image/feature cache folder (default ~/.cache/thawline)")
    workers: int | None = option(None, "processes that decode images (default: CPU count)")
    test_each_phase: bool = option(False, "also measure test accuracy at the end of every phase")
    max_per_class: int | None = option(None, "cap train images per class")
    # fastai's valid_pct, Keras' validation_split: a folder of class folders alone, or train/ without val/, still
    # trains; held out by file content, so every run and every strategy of a compare sees the same split.
    val_split: float | None = option(
        None, "when the data has no val/ folder: the share of each class's train images held out as val (default 0.2)"
    )
    test_split: float | None = option(
        None,
        "when the data has no test/ folder: the share of each class's train images held out as test (default: none)",
    )
    allow_leakage: bool = option(
        False, "train even when identical images are in train and val/test (a warning instead of an error)"
    )
    class_weights: str | None = option(
        None, "auto: weight the loss by inverse class frequency (skewed folders)", cli={"choices": ("auto",)}
    )
    balanced_sampler: bool = option(False, "draw train batches so every class is equally likely (skewed folders)")
    out: str | None = option(None, "output folder (default runs/<strategy>-N)")
    wandb: str | None = option(
        None,
        "also log to Weights & Biases (project, default thawline; offline when the server is unreachable)",
        cli={"nargs": "?", "const": "thawline", "metavar": "PROJECT"},
    )
    extra: dict[str, Any] = option({}, "free-form notes saved with the run", cli={"skip": True})

    def validate(self) -> TrainConfig:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        _choice("preset", self.preset, tuple(PRESETS))
        _positive("batch_size", self.batch_size)
        if self.epochs is not None:
            _positive("epochs", self.epochs)
        if self.img_size is not None and not 16 <= self.img_size <= 1024:
            raise ThawlineError(f"--img-size {self.img_size}: must be between 16 and 1024")
        if self.class_weights not in (None, "auto", "none"):
            raise ThawlineError(f"--class-weights {self.class_weights}: must be auto (or left out)")
        if self.lr is not None and self.lr != "auto" and not 0 < self.lr < 10:
            raise ThawlineError(f"--lr {self.lr}: must be a positive learning rate such as 1e-4")
        if not 0 <= self.label_smoothing < 1:
            raise ThawlineError(f"label_smoothing {self.label_smoothing}: must be in [0, 1)")
        if not 0 < self.min_scale <= 1:
            raise ThawlineError(f"--min-scale {self.min_scale}: must be in (0, 1], e.g. 0.35 (1: no crops)")
        shares = {"--val-split": self.val_split, "--test-split": self.test_split}
        for flag, share in shares.items():
            if share is not None and not 0 <= share < 1:
                raise ThawlineError(f"{flag} {share}: must be in [0, 1), e.g. 0.2")
        if sum(v or 0 for v in shares.values()) >= 1:
            raise ThawlineError(f"--val-split {self.val_split} and --test-split {self.test_split}: their sum must be "
                                "below 1, e.g. 0.2 and 0.2")  # fmt: skip
        if self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 <= self.drop_rate < 1:
            raise ThawlineError("weight_decay and warmup_epochs must be >= 0, drop_rate in [0, 1)")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            raise ThawlineError(f"bn_momentum {self.bn_momentum}: must be in (0, 1], e.g. 0.1")
        if self.max_per_class is not None:
            _positive("max_per_class", self.max_per_class)
        if self.min_steps < 0 or self.head_steps < 0:
            raise ThawlineError("min_steps and head_steps must be >= 0 (0: the epochs alone set the steps)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A preset sets recipe fields; explicit user values (CLI flags, YAML keys) still win over it.
PRESETS: dict[str, dict[str, Any]] = {
    # AdamW + per-phase warm-up/cosine + label smoothing: converges in fewer epochs than constant-LR Adam,
    # which matters when a whole comparison has to fit in minutes.
    "default": {},
    # The seed scripts exactly: Adam, plain cross-entropy, constant LR, batch 32, 224 px.
    "seed": {
        "optimizer": "adam",
        "weight_decay": 0.0,
        "label_smoothing": 0.0,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "min_steps": 0,
        "head_steps": 0,
        "head_solver": False,
        "batch_size": 32,
        "img_size": 224,
        "feature_cache": True,
    },
    # Best test accuracy within ~20 min wall time on a small (2-core) CPU: low resolution so a cached-prefix
    # strategy (partial) spends its time on the trainable suffix; the flip view's prefix pass costs ~1/4 of an
    # epoch. Fashion-MNIST (54k train, 64 px): 93.63% test in 18-19 min; a 4th epoch (93.80%) ran over at 20.4 min,
    # the old 4000/class without flips gave 92.95% (README: Performance).
    "quality-20min": {
        "img_size": 64,
        "epochs": 3,
        "hflip": True,
        "feature_cache": True,
    },
}


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        if not isinstance(value, str) or len(value) > 60:  # a list or a page of text: say what it is, not all of it
            raise ThawlineError(f"{name} {shown(value)} is not one of {', '.join(choices)}")
        raise ThawlineError(f"{name} '{value}' is not one of {', '.join(choices)}{close_matches(value, choices)}")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ThawlineError(f"{name} {shown(value)}: must be a positive integer")


@dataclass(frozen=True)
class OptionSpec:
    """What a config field's declaration says about its option: everything the CLI and the YAML check need."""

    name: str
    kind: type  # int, float, str, bool or dict: the first non-None type of the annotation
    nullable: bool
    default: Any
    help: str
    words: tuple[str, ...]
    cli: dict[str, Any]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def option_specs(cls: type[TrainConfig] = TrainConfig) -> list[OptionSpec]:
    """One spec per field of `cls` (TrainConfig or a subclass that adds options), in declaration order."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in fields(cls):
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        kinds = [typing.get_origin(a) or a for a in args if a is not type(None)]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        specs.append(
            OptionSpec(
                f.name,
                kinds[0],
                type(None) in args,
                default,
                f.metadata.get("help", ""),
                f.metadata.get("words", ()),
                f.metadata.get("cli", {}),
            )
        )
    return specs


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))

# The keys a run's config.yaml holds beside its options (runformat.DERIVED_KEYS: what
# `prepare.RunSetup.resolved_config` derives from them) are ignored by `make_config`, so a run's config.yaml is
# itself a --config file that reruns the run.

# Options that say where and how a run executes, not what it computes: a resume may change them freely. Every
# other option (and the derived classes and phases) must equal the saved run's to continue it.
PLACE_OPTIONS = ("out", "workers", "cache_dir", "device", "wandb")


def make_config(
    overrides: dict[str, Any], yaml_file: str | None = None, cls: type[TrainConfig] = TrainConfig
) -> TrainConfig:
    """Defaults < preset < YAML file < explicit overrides (None values in `overrides` are ignored)."""
    names = tuple(f.name for f in fields(cls))
    values: dict[str, Any] = {}
    if yaml_file:
        values.update(_options_of(load_yaml_mapping(yaml_file), names, from_file=True))
    values.update({k: v for k, v in _options_of(overrides, names).items() if v is not None})
    for key in values:
        if key not in names:
            raise ThawlineError(
                f"unknown option '{key}'{close_matches(key, names)}; known options: see `thawline train -h`"
            )
    preset = values.get("preset", "default")
    _choice("preset", preset, tuple(PRESETS))
    merged = {**PRESETS[preset], **values}
    try:
        config = cls(**merged)
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise ThawlineError(f"bad configuration: {e}") from None
    _check_types(config)
    return config.validate()


def _options_of(values: dict[str, Any], names: tuple[str, ...], from_file: bool = False) -> dict[str, Any]:
    """`values` without the derived keys a run's config.yaml adds; in a file, the resolved device a run records
    ("cuda:0" under torchrun) as the option it came from."""
    options = {k: v for k, v in values.items() if k in names or k not in DERIVED_KEYS}
    device = options.get("device")
    if from_file and isinstance(device, str) and re.fullmatch(r"cuda:\d+", device):
        options["device"] = "cuda"
    return options


def _check_types(config: TrainConfig) -> None:
    """YAML gives strings where numbers were meant ("1e-4" is a string in YAML 1.1); coerce or say so."""
    for spec in option_specs(type(config)):
        kind = spec.kind
        value = getattr(config, spec.name)
        if kind not in (int, float) or value is None or value in spec.words:
            continue
        if isinstance(value, kind) and not isinstance(value, bool):
            continue
        try:
            if isinstance(value, bool):
                raise ValueError
            coerced = kind(value)
            if kind is int and float(value) != coerced:
                raise ValueError
        except (TypeError, ValueError):
            raise ThawlineError(f"option {spec.name}: {shown(value)} is not a valid {kind.__name__}") from None
        setattr(config, spec.name, coerced)


# A config or strategies file is a few kB and a run's config.yaml (its class list) rarely 1 MB: far more is not a
# file thawline should parse, whatever it holds.
MAX_YAML_BYTES = 8 * 1024 * 1024
# The flag that names each kind of YAML file, for the "pass an existing file" fix.
_YAML_FLAGS = {"config file": "--config", "strategies file": "--strategies-file"}


class _AnchorsRefused(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class PlainYamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors and aliases (& and *): nested aliases expand to billions of values from a few
    lines (the "billion laughs"), and no file thawline reads needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AnchorsRefused(event.start_mark.line + 1)
        return super().compose_node(parent, index)


def shown(value: Any, limit: int = 60) -> str:
    """`value`'s repr for an error message, cut to `limit` characters: a message never spells out a huge value."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:  # no repr of a million items to cut
        return f"<a {type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """The one reader of YAML that thawline did not just write (a --config file, a strategies file, a run's
    config.yaml that may have been edited): safe types only, no anchors/aliases, at most MAX_YAML_BYTES. Every
    failure is one ThawlineError line that starts with `what` and the path."""
    p = Path(path)
    if not p.is_file():
        flag = _YAML_FLAGS.get(what)
        raise ThawlineError(f"{what} '{path}' not found; pass an existing YAML file" + (f" to {flag}" if flag else ""))
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # read() of a bounded size: also for a FIFO or a growing file
    except OSError as e:
        raise ThawlineError(f"cannot read {what} '{path}' ({e.strerror}); make it readable") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ThawlineError(
            f"{what} '{path}' is over {MAX_YAML_BYTES // 2**20} MB, too large for a YAML file of options; "
            "pass the right file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ThawlineError(f"{what} '{path}' is not UTF-8 text; save it as UTF-8 YAML") from None
    try:
        return yaml.load(text, Loader=PlainYamlLoader)  # noqa: S506 - PlainYamlLoader is a SafeLoader
    except _AnchorsRefused as e:
        raise ThawlineError(
            f"{what} '{path}' uses YAML anchors/aliases (& and *, line {e.line}), which thawline does not read; "
            "write the values out"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ThawlineError(f"{what} '{path}' is not valid YAML{where}; fix the syntax there") from None
    except RecursionError:  # thousands of nested [[[...]]]: PyYAML's composer recurses per level
        raise ThawlineError(f"{what} '{path}' nests too deeply to be a file of options; write the values out") from None


def load_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """`read_yaml`, and the document must be a mapping (or empty: {})."""
    data = read_yaml(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = "option: value" if what == "config file" else "key: value"
        raise ThawlineError(f"{what} '{path}' must be a YAML mapping of {kind}")
    return data


def save_yaml(path: str | os.PathLike, data: dict[str, Any]) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def replace(config: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(config, **changes)


def option_flags(config: TrainConfig, exclude: Collection[str] = ()) -> list[str]:
    """The command-line flags (argv form) that give `config`'s options that differ from their defaults (the
    preset's, under a preset): what to type to get the same options again, as `add_config_options` reads them."""
    preset = PRESETS.get(config.preset, {})
    flags: list[str] = []
    for spec in option_specs(type(config)):
        value = getattr(config, spec.name)
        if spec.name in exclude or spec.cli.get("skip") or value == preset.get(spec.name, spec.default):
            continue
        if spec.kind is bool and (spec.nullable or value != spec.default):
            off = f"--no-{spec.name.replace('_', '-')}"
            flags.append(spec.flag if value else off)
        elif spec.kind is bool:  # back to the default under a preset that changed it: not expressible
            continue
        elif value is not None:
            flags += [spec.flag, str(value)]
    return flags
