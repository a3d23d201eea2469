"""Predict images with a trained run: the files given (images or folders), top-k classes, text/CSV/JSON output."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thawline.core.errors import ThawlineError
from thawline.core.runformat import CONFIG
from thawline.data.files import Skipped, printable, walk_images
from thawline.data.images import BadImage
from thawline.deploy.load import Preprocess, check_batch_size, check_tta, load_run, logits_of, pick_device


def image_files(folder: str | os.PathLike, skipped: list[Skipped] | None = None) -> list[str]:
    """Image files below `folder` (recursive, sorted, by extension); what is not one goes to `skipped` with why."""
    # no labels here: a link anywhere is followed (each real file once)
    return list(walk_images(folder, [] if skipped is None else skipped, confined=False))


# ---- predict -----------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    path: str
    labels: list[str] = field(default_factory=list)  # top-k, most probable first
    probs: list[float] = field(default_factory=list)
    error: str | None = None  # why the file could not be predicted
    skipped: bool = False  # found in a folder but not an image file: listed with `error` as the reason, not tried

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def failed(self) -> bool:
        return self.error is not None and not self.skipped

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error, **({"skipped": True} if self.skipped else {})}
        return {
            "path": self.path,
            "top_k": [{"label": c, "probability": p} for c, p in zip(self.labels, self.probs, strict=True)],
        }


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, str | None, bool]]:
    """(path, error, skipped) per input file: folders expand to their image files, and list what else they hold
    (skipped, with the reason); a path named that cannot be read carries its error."""
    out: list[tuple[str, str | None, bool]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            skipped: list[Skipped] = []
            files = image_files(p, skipped)
            out.extend((f, None, False) for f in files)
            # what the folder holds besides images, each with why (hidden files left out: .DS_Store is noise)
            out.extend((s.path, s.reason, True) for s in skipped if not os.path.basename(s.path).startswith("."))
            if not files:
                out.append((str(p), "folder holds no image files", False))
        elif p.is_file():
            out.append((str(p), None, False))
        elif p.is_symlink() and not p.exists():
            out.append((str(p), "broken symbolic link (its target is missing)", False))
        elif p.exists():
            out.append((str(p), "not a regular file or folder", False))
        else:
            out.append((str(p), "no such file or folder", False))
    return out


def predict(
    run_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    which: str = "best",
    device: str | None = "cpu",
    tta: bool = False,
) -> list[Prediction]:
    """Top-k labels and probabilities for image files and folders; unreadable files come back with `error` set.
    `tta`: probabilities averaged over each image and its mirror image."""
    if top_k < 1:
        raise ThawlineError(f"--top-k {top_k}: must be at least 1")
    check_batch_size(batch_size)
    dev = pick_device(device)
    model, cfg = load_run(run_dir, which, dev)
    check_tta(cfg, tta)
    classes = list(cfg[CONFIG.classes])
    k = min(top_k, len(classes))
    prep = Preprocess.from_config(cfg)
    results = [Prediction(path, error=err, skipped=skip) for path, err, skip in expand_inputs(inputs)]
    pending: list[tuple[Prediction, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        probs = torch.softmax(logits_of(model, prep.to_tensor(np.stack([a for _, a in pending])), dev, tta), 1)
        top = probs.topk(k, dim=1)
        for (res, _), values, indices in zip(pending, top.values, top.indices, strict=True):
            res.labels = [classes[int(i)] for i in indices]
            res.probs = [round(float(v), 6) for v in values]
        pending.clear()

    for res in results:
        if res.error is not None:
            continue
        try:
            pending.append((res, prep.decode(res.path)))
        except BadImage as e:
            res.error = e.reason
        if len(pending) >= batch_size:
            flush()
    flush()
    return results


def format_predictions(results: list[Prediction], fmt: str, top_k: int) -> str:
    """table | csv | json text of `predict` results (input order; failed files keep their place)."""
    if fmt == "json":
        return json.dumps(
            {
                "predicted": sum(r.ok for r in results),
                "failed": sum(r.failed for r in results),
                "skipped": sum(r.skipped for r in results),
                "results": [r.to_dict() for r in results],
            },
            indent=2,
        )
    if fmt == "csv":
        k = max([len(r.labels) for r in results if r.ok] or [top_k])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", *[f"{col}_{i + 1}" for i in range(k) for col in ("label", "prob")], "error"])
        for r in results:  # names with their control characters escaped: CSV is read in terminals and sheets
            labels = [printable(c) for c in r.labels]
            cells = [x for pair in zip(labels, (f"{p:.6f}" for p in r.probs), strict=True) for x in pair]
            w.writerow([printable(r.path), *cells, *[""] * (2 * k - len(cells)), printable(r.error or "")])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ThawlineError(f"--format '{fmt}' must be table, csv or json")
    shown = [printable(r.path) for r in results]  # as the terminal shows them (control characters escaped)
    width = min(max([len(path) for path in shown] or [4]), 80)
    lines = []
    for r, path in zip(results, shown, strict=True):
        if r.ok:
            preds = "  ".join(f"{printable(c)} {p:.3f}" for c, p in zip(r.labels, r.probs, strict=True))
            lines.append(f"{path:<{width}}  {preds}")
        else:
            lines.append(f"{path:<{width}}  {'skipped' if r.skipped else 'error'}: {printable(r.error or '')}")
    return "\n".join(lines)
