"""Load a trained run: rebuild its model from the checkpoint, preprocess images as training did, the device, the
logits (with TTA), and the checks of the options that use it."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from thawline.core.config import load_yaml_mapping
from thawline.core.errors import ThawlineError
from thawline.core.runformat import CONFIG, CONFIG_FILE, SUMMARY_FILE
from thawline.data.batches import Normalize
from thawline.data.images import decode_resized
from thawline.deploy.answer import AnswerEnsemble, member_runs, read_answer
from thawline.models.multidepth import install_multidepth_head
from thawline.models.stages import stage_map
from thawline.models.weights import check_model_name
from thawline.training.checkpoint import load_checkpoint

CHECKPOINTS = ("best", "last")
REQUIRED_KEYS = (CONFIG.model, CONFIG.classes, CONFIG.img_size, CONFIG.interpolation, CONFIG.mean, CONFIG.std)


# ---- loading a run ---------------------------------------------------------------------------------------


def checkpoint_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint file of a run folder: best.pt (falling back to last.pt), last.pt, or a .pt path itself."""
    path = Path(run_dir)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ThawlineError(f"run folder '{path}' not found; pass a folder written by `thawline train`")
    if which not in CHECKPOINTS:
        raise ThawlineError(f"checkpoint '{which}' must be one of {', '.join(CHECKPOINTS)}")
    for name in (which, "last") if which == "best" else (which,):
        if (path / f"{name}.pt").is_file():
            return path / f"{name}.pt"
    if (path / SUMMARY_FILE).is_file() and not (path / CONFIG_FILE).is_file():
        raise ThawlineError(f"'{path}' looks like a compare folder; pass one of its strategy sub-folders")
    raise ThawlineError(f"run folder '{path}' has no {which}.pt checkpoint; train into it first (`thawline train`)")


def run_folder(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir)
    return path.parent if path.is_file() else path


def load_run(
    run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode with the checkpoint's weights, the run's resolved config) for a run folder or .pt file;
    for the folder of a cross-validated comparison, its answer (`answer.AnswerEnsemble` over its fold models, the
    first one's config with `answer` added)."""
    answer = read_answer(Path(run_dir))
    if answer is None:
        return load_one_run(run_dir, which, device)
    loaded = [(load_one_run(run, which, device), weight) for run, weight in member_runs(Path(run_dir), answer)]
    model = AnswerEnsemble([m for (m, _), _ in loaded], [w for _, w in loaded]).to(device).eval()
    cfg = {**loaded[0][0][1], "answer": {k: answer[k] for k in ("kind", "members", "oof_acc", "test_acc")},
           "strategy": "+".join(answer["members"]), "checkpoint": str(Path(run_dir))}  # fmt: skip
    return model, cfg


def load_one_run(
    run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode with the checkpoint's weights, the run's resolved config) for a run folder or .pt file."""
    import timm

    path = checkpoint_path(run_dir, which)
    state = load_checkpoint(path)
    cfg = state.get("config")
    if not isinstance(cfg, dict):
        cfg = _config_yaml(run_folder(run_dir))
    missing = [k for k in REQUIRED_KEYS if cfg.get(k) in (None, [], "")]
    if missing:
        raise ThawlineError(
            f"'{path}' records no {', '.join(missing)} in its config; it is not a complete thawline run"
        )
    check_model_name(cfg[CONFIG.model])
    classes = list(cfg[CONFIG.classes])
    model = timm.create_model(
        cfg[CONFIG.model], pretrained=False, num_classes=len(classes), drop_rate=float(cfg.get(CONFIG.drop_rate) or 0.0)
    )
    if cfg.get(CONFIG.strategy_head, "linear") == "multi-depth":  # head2toe: the head over every stage, as trained

        install_multidepth_head(model, stage_map(model), int(cfg.get(CONFIG.img_size) or 224))
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise ThawlineError(f"'{path}' holds no model weights")
    own = model.state_dict()
    absent = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if absent or extra or wrong:
        what = [f"{len(v)} {n} (e.g. '{v[0]}')" for n, v in (("missing", absent), ("unexpected", extra)) if v]
        if wrong:
            key = wrong[0]
            what.append(f"'{key}' has shape {tuple(weights[key].shape)}, expected {tuple(own[key].shape)}")
        raise ThawlineError(
            f"'{path}' does not fit {cfg[CONFIG.model]} with {len(classes)} classes: {'; '.join(what)}; "
            "the checkpoint and its config disagree (was the file replaced?)"
        )
    model.load_state_dict(weights)
    model.to(device).eval()
    cfg = {**cfg, "checkpoint": str(path), "checkpoint_epoch": state.get("global_epoch")}
    return model, cfg


def _config_yaml(folder: Path) -> dict[str, Any]:
    if not (folder / CONFIG_FILE).is_file():
        raise ThawlineError(f"'{folder}' has no config.yaml and its checkpoint records none; not a thawline run")
    return load_yaml_mapping(str(folder / CONFIG_FILE))


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ThawlineError("--device cuda: no CUDA GPU is visible; use --device cpu (or auto)")
    return torch.device(device)


@dataclass
class Preprocess:
    """The run's input pipeline: decode + whole-image resize (uint8 HWC), then normalise to float NCHW."""

    img_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Preprocess:
        return cls(
            int(cfg[CONFIG.img_size]), str(cfg[CONFIG.interpolation]), tuple(cfg[CONFIG.mean]), tuple(cfg[CONFIG.std])
        )

    def decode(self, path: str | os.PathLike) -> np.ndarray:
        """(img_size, img_size, 3) uint8, or BadImage naming what is wrong with the file."""
        return decode_resized(path, self.img_size, self.interpolation)

    def to_tensor(self, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float32 (N, 3, H, W)."""
        rows = torch.as_tensor(rows)
        return Normalize(self.mean, self.std)(rows).contiguous()

    def __call__(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        return self.to_tensor(np.stack([self.decode(p) for p in paths]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "img_size": self.img_size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@torch.inference_mode()
def logits_of(model: nn.Module, x: torch.Tensor, device: torch.device, tta: bool = False) -> torch.Tensor:
    """The model's logits; with `tta`, the log of the mean softmax of the image and its mirror image (so a
    softmax of the result is the averaged probabilities, and every metric reads it as it reads logits)."""
    x = x.to(device)
    if not tta:
        return model(x).float().cpu()
    both = model(torch.cat([x, x.flip(-1)])).float().log_softmax(1)
    return (torch.logsumexp(torch.stack(both.chunk(2)), 0) - math.log(2)).cpu()


def check_tta(cfg: dict[str, Any], tta: bool) -> None:
    """Mirror-image averaging only for a run that trained on mirrored images: elsewhere a mirror may change the
    class (text, digits, left/right)."""
    if tta and not cfg.get(CONFIG.hflip, True):
        raise ThawlineError(
            "--tta averages each image with its mirror image, but this run was trained without flips (--no-hflip: "
            "a mirrored image may mean something else in this data); drop --tta"
        )


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ThawlineError(f"--batch-size {batch_size}: must be at least 1")
