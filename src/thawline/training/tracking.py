"""Experiment tracking: TensorBoard event files in every run, and Weights & Biases when asked (`--wandb`).

Both receive the same per-epoch scalars and the prediction grid image. W&B runs offline (files under the run
folder, `wandb sync` later) whenever its server cannot be reached, so a machine without network still works.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from thawline.core.atomic import writing
from thawline.core.errors import ThawlineError
from thawline.core.runformat import EPOCH
from thawline.models.weights import hub_reachable

SCALARS = (EPOCH.train_loss, EPOCH.train_acc, EPOCH.val_loss, EPOCH.val_acc, EPOCH.lr, EPOCH.images_per_s)
_thread_hook = threading.excepthook


def _quiet_event_writer(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread re-raises a failed write on the main thread's next call (where it becomes one line);
    its own traceback is noise."""
    if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
        return
    _thread_hook(args)


threading.excepthook = _quiet_event_writer


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

        with writing(Path(out) / "events.out.tfevents.*"):
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
        with writing(self._event_file()):
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
        with writing(self._event_file()):
            self.tb.add_image(tag, array, step, dataformats="HWC")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Image(str(png))}, step=step)

    def _event_file(self) -> str:
        return event_file(self.tb)

    def close(self, discard: bool = False) -> None:
        """Flush and close. `discard`: the run folder is gone or another folder took its place; TensorBoard appends to
        its file by path, so what it wrote since then landed there: that file is removed from the new folder."""
        tb, self.tb = self.tb, None
        try:
            if tb is not None and discard:
                path = Path(event_file(tb))  # before close(), which forgets it
                with contextlib.suppress(OSError):
                    tb.close()
                if path.name.startswith("events.out.tfevents."):  # this writer's alone (time, host, pid, counter)
                    path.unlink(missing_ok=True)
            elif tb is not None:
                with writing(event_file(tb)):
                    tb.close()
        finally:
            if self.wandb_run is not None:
                self.wandb_run.finish()
                self.wandb_run = None


def event_file(tb: Any) -> str:
    """The TensorBoard event file a SummaryWriter writes (its folder when the writer hides it)."""
    writer = getattr(getattr(tb, "file_writer", None), "event_writer", None)
    return str(getattr(writer, "_file_name", None) or tb.get_logdir())
