"""Experiment tracking: TensorBoard event files in every run, and Weights & Biases when asked (`--wandb`).

Both receive the same per-epoch scalars and the prediction grid image. W&B runs offline (files under the run
folder, `wandb sync` later) whenever its server cannot be reached, so a machine without network still works.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from thawline.errors import ThawlineError

SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")


def wandb_module():
    """The wandb package, or one clear line saying how to get it."""
    try:
        import wandb
    except ImportError:
        raise ThawlineError(
            "--wandb: the wandb package is not installed; run `pip install wandb` (or drop --wandb)"
        ) from None
    return wandb


def wandb_mode() -> str:
    """WANDB_MODE when the user set it; otherwise online only when the W&B server answers."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    from thawline.weights import hub_reachable

    return "online" if hub_reachable("api.wandb.ai", timeout=2.0) else "offline"


class Tracker:
    """Scalars and images to TensorBoard (always) and W&B (when `wandb_project` is set); rank 0 only."""

    def __init__(
        self, out: Path, name: str, config: dict[str, Any], wandb_project: str | None = None, enabled: bool = True
    ) -> None:
        self.tb = None
        self.wandb_run = None
        if not enabled:  # DDP ranks other than 0 log nothing
            return
        from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

        self.tb = SummaryWriter(str(out))
        if wandb_project:
            wandb = wandb_module()
            mode = wandb_mode()
            self.wandb_run = wandb.init(
                project=wandb_project, name=name, dir=str(out), config=config, mode=mode, reinit="create_new"
            )

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if self.tb is None:
            return
        clean = {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for key, value in clean.items():
            self.tb.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log({**clean, "epoch": step}, step=step)

    def image(self, tag: str, png: Path, step: int) -> None:
        """Log a PNG file (the prediction grid) as an image."""
        if self.tb is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(png) as img:
            array = np.asarray(img.convert("RGB"))
        self.tb.add_image(tag, array, step, dataformats="HWC")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Image(str(png))}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
