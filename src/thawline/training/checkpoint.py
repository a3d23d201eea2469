"""Checkpoints: atomic writes (thawline.core.atomic) and `weights_only` loads of plain tensors and primitives."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from thawline.core.atomic import WriteFailed, atomic_file, atomic_path
from thawline.core.errors import ThawlineError

FORMAT = "thawline-checkpoint-1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` so that `path` holds either the old or the new checkpoint, never a partial one."""
    path = Path(path)
    note = "; the previous checkpoint is intact" if path.exists() else ""
    try:
        with atomic_file(path, "wb", note=note) as f:
            torch.save({"format": FORMAT, **state}, f)
    except WriteFailed as e:
        if e.errno != errno.ENOSPC:
            raise
        kept = " (the previous checkpoint is intact)" if note else ""
        message = f"disk full while writing checkpoint '{path}'; free space there or pass --out elsewhere{kept}"
        raise WriteFailed(path, OSError(e.errno, os.strerror(e.errno)), message=message) from None


def link_checkpoint(saved: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make `path` a second name of the checkpoint file `saved` (a hard link renamed into place, a copy where the
    file system has no links): the same state is not serialised twice. Every later save writes a new file and
    renames it, so the two names part when either is saved again."""
    with atomic_path(path) as tmp:
        tmp.unlink()
        try:
            os.link(saved, tmp)
        except OSError:
            shutil.copyfile(saved, tmp)


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
