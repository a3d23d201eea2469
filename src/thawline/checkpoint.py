"""Checkpoints: atomic writes (temp, fsync, rename) and `weights_only` loads of plain tensors and primitives."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from thawline.errors import ThawlineError

FORMAT = "thawline-checkpoint-1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` so that `path` holds either the old or the new checkpoint, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise ThawlineError(
                f"disk full while writing checkpoint '{path}'; free space there (the previous checkpoint is intact)"
            ) from None
        raise ThawlineError(f"cannot write checkpoint '{path}': {e.strerror}; check the folder's permissions") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ThawlineError(f"checkpoint '{path}' not found; point at a run folder that holds last.pt or best.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling/format problem is a bad input file, not our bug
        raise ThawlineError(
            f"checkpoint '{path}' cannot be read ({type(e).__name__}); it is corrupt or not a thawline checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ThawlineError(f"'{path}' is not a thawline checkpoint; use --weights for plain state dicts")
    return state
