"""Every option of a run as one dataclass, with presets, YAML load/save and one-line validation errors."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from thawline.errors import ThawlineError, close_matches

DEFAULT_MODEL = "tf_efficientnet_lite0"
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """One training run. Field comments are the CLI help; `None` means "derived" (see `resolved`)."""

    data: str | None = None  # ImageFolder root with train/ and val/ (test/ optional)
    model: str = DEFAULT_MODEL  # any timm model name
    weights: str = "default"  # default (embedded lite0) | hub | none | PATH
    strategy: str = "two-phase"  # a registered strategy name (see `thawline strategies`)
    strategies_file: str | None = None  # YAML file with extra user-defined strategies
    epochs: int | None = None  # total epoch budget split across phases; None = the strategy's own epochs
    img_size: int | None = None  # None = the model's pretrained input size
    batch_size: int = 32
    lr: float | str | None = None  # rescales the strategy's LRs so its first phase uses this LR; "auto" = lr-find
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    schedule: str = "cosine"  # per phase: linear warm-up then cosine, or constant
    warmup_epochs: float = 0.25  # warm-up length at the start of every phase, in epochs
    hflip: bool = True  # random horizontal flip on train images (the seeds' only augmentation)
    drop_rate: float = 0.0  # dropout before the classifier
    # BatchNorm momentum in training stages. TF-ported models (tf_efficientnet_*) carry TF's 0.01, which lets
    # running stats lag far behind the batch stats on a new domain for hundreds of steps, so validation (which
    # uses running stats) collapses after a thaw; 0.1 is PyTorch's default. None keeps the model's own.
    bn_momentum: float | None = 0.1
    seed: int = 0
    preset: str = "default"  # default | seed (the seed scripts' exact recipe)
    device: str = "auto"  # auto | cpu | cuda
    channels_last: bool | None = None  # None = on (faster convolutions on CPU and CUDA)
    amp: bool | None = None  # bf16 autocast; None = on for CUDA (slower than fp32 on AVX2 CPUs)
    feature_cache: bool = True  # train only the suffix on cached frozen-prefix features when possible
    cache_dir: str | None = None  # decode-once and feature caches; default ~/.cache/thawline
    workers: int | None = None  # processes that decode images once; None = CPU count
    test_each_phase: bool = False  # also measure test accuracy at the end of every phase (summary.phase_results)
    max_per_class: int | None = None  # cap train images per class (quick experiments)
    allow_leakage: bool = False  # train even when identical images sit in train and val/test
    class_weights: str | None = None  # None | auto: loss weights inversely proportional to class frequency
    balanced_sampler: bool = False  # draw train batches with equal expected counts per class
    out: str | None = None  # run folder; default runs/<strategy>-N
    wandb: str | None = None  # W&B project to log to as well as TensorBoard (offline when W&B is unreachable)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes saved with the run

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
        if self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 <= self.drop_rate < 1:
            raise ThawlineError("weight_decay and warmup_epochs must be >= 0, drop_rate in [0, 1)")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            raise ThawlineError(f"bn_momentum {self.bn_momentum}: must be in (0, 1], e.g. 0.1")
        if self.max_per_class is not None:
            _positive("max_per_class", self.max_per_class)
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
        "batch_size": 32,
        "img_size": 224,
        "feature_cache": True,
    },
    # Best test accuracy within ~20 min wall time on a small (2-core) CPU: low resolution and a short run so a
    # cached-prefix strategy (partial) spends its time on the suffix; one view (no flips) means one prefix pass
    # per image, and the per-class cap keeps three epochs inside the budget on a 60k-image set (all 5400 images
    # per class reached 93.43% test but took 21 min).
    "quality-20min": {
        "img_size": 64,
        "epochs": 3,
        "hflip": False,
        "max_per_class": 4000,
        "feature_cache": True,
    },
}


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ThawlineError(f"{name} '{value}' is not one of {', '.join(choices)}{close_matches(value, choices)}")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ThawlineError(f"{name} {value!r}: must be a positive integer")


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


def make_config(overrides: dict[str, Any], yaml_file: str | None = None) -> TrainConfig:
    """Defaults < preset < YAML file < explicit overrides (None values in `overrides` are ignored)."""
    values: dict[str, Any] = {}
    if yaml_file:
        values.update(load_yaml_mapping(yaml_file))
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in values:
        if key not in FIELD_NAMES:
            raise ThawlineError(
                f"unknown option '{key}'{close_matches(key, FIELD_NAMES)}; known options: see `thawline train -h`"
            )
    preset = values.get("preset", "default")
    _choice("preset", preset, tuple(PRESETS))
    merged = {**PRESETS[preset], **values}
    try:
        config = TrainConfig(**merged)
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise ThawlineError(f"bad configuration: {e}") from None
    _check_types(config)
    return config.validate()


def _check_types(config: TrainConfig) -> None:
    """YAML gives strings where numbers were meant ("1e-4" is a string in YAML 1.1); coerce or say so."""
    numeric = {
        "epochs": int,
        "img_size": int,
        "batch_size": int,
        "seed": int,
        "workers": int,
        "max_per_class": int,
        "lr": float,
        "weight_decay": float,
        "label_smoothing": float,
        "warmup_epochs": float,
        "drop_rate": float,
        "bn_momentum": float,
    }
    for name, kind in numeric.items():
        value = getattr(config, name)
        if (
            value is None
            or (isinstance(value, kind) and not isinstance(value, bool))
            or (name, value) == ("lr", "auto")
        ):
            continue
        try:
            coerced = kind(value)
            if kind is int and float(value) != coerced:
                raise ValueError
        except (TypeError, ValueError):
            raise ThawlineError(f"option {name}: {value!r} is not a valid {kind.__name__}") from None
        setattr(config, name, coerced)


def load_yaml_mapping(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ThawlineError(f"config file '{path}' not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ThawlineError(f"config file '{path}' is not valid YAML{where}; fix the syntax there") from None
    except UnicodeDecodeError:
        raise ThawlineError(f"config file '{path}' is not UTF-8 text; save it as UTF-8 YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ThawlineError(f"config file '{path}' must be a YAML mapping of option: value")
    return data


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_yaml(path: str | os.PathLike, data: dict[str, Any]) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def replace(config: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(config, **changes)
