"""Evaluate a trained run on one of its splits or on other labelled folders: metrics, predictions.csv,
evaluation.json, and the console text."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from thawline.core.atomic import write_text_atomic
from thawline.core.errors import ThawlineError
from thawline.core.runformat import CONFIG
from thawline.data.cache_store import default_cache_dir
from thawline.data.discovery import discover
from thawline.data.files import Skipped, Walker
from thawline.data.image_cache import build_image_cache
from thawline.data.splits import held_out_shares, training_layout
from thawline.deploy.load import Preprocess, check_batch_size, check_tta, load_run, logits_of, pick_device, run_folder
from thawline.report.metrics import accuracy, calibration, confusion_matrix, per_class_metrics, write_predictions
from thawline.training import runtime


def labelled_files(
    folder: Path, classes: list[str], skipped: list[Skipped] | None = None
) -> tuple[list[str], list[int]]:
    """An ImageFolder-style folder (one sub-folder per class) as paths and class indices of the run's classes; as in
    training, a class folder with no images is skipped and one of another class refused."""
    if not folder.is_dir():
        raise ThawlineError(f"'{folder}' is not a folder; pass a folder of class sub-folders (<class>/<images>)")
    skipped = [] if skipped is None else skipped
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    walker = Walker(folder, skipped)  # as training reads a split: each file once, under the class folder it sits in
    for name in walker.class_folders(folder):
        files = sorted(walker.images(folder / name))
        if not files:
            skipped.append(Skipped(str(folder / name), "class folder with no images", folder=True))
            continue
        if name not in index:
            shown = ", ".join(classes[:8]) + (", …" if len(classes) > 8 else "")
            raise ThawlineError(
                f"class folder '{name}' in {folder} is not one of the run's classes ({shown}); "
                "pass a folder whose sub-folders are class names the run was trained on"
            )
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    if not paths:
        raise ThawlineError(f"'{folder}' holds no images in class folders; expected {folder}/<class name>/<images>")
    return paths, labels


# ---- evaluate ----------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    run_dir: Path
    split: str  # "test", "val", "train" or the folder's name
    folder: Path
    classes: list[str]
    paths: list[str]  # images that decoded, in order
    labels: np.ndarray
    logits: torch.Tensor  # with tta: log of the mirror-averaged probabilities
    skipped: list[tuple[str, str]] = field(default_factory=list)
    tta: bool = False
    report: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(self.report["accuracy"])


SplitFileList = tuple[list[str], list[int]]


def resolve_split(cfg: dict[str, Any], split: str | None) -> tuple[str, Path, SplitFileList | None]:
    """('test' | 'val' | 'train' | folder name, folder, files) for --split; default: test when the data has it, else
    val. `files` (paths, labels of the run's classes) when the split is held out of train (--val-split,
    --test-split) or is the train left after that: the same files training used; None for a whole folder."""
    if split is not None and split not in ("test", "val", "train"):
        folder = Path(split)
        if not folder.is_dir():
            raise ThawlineError(f"--split '{split}' is neither test, val, train nor an existing folder")
        return folder.resolve().name, folder, None
    data = cfg.get(CONFIG.data)
    if not data:
        raise ThawlineError("the run records no data folder; pass --split DIR (a folder of class sub-folders)")
    root = Path(data)
    if not root.is_dir():
        raise ThawlineError(
            f"the run's data folder '{root}' is not there (moved, or a relative path from another folder?); "
            "pass --split DIR"
        )
    layout = training_layout(root)
    shares = held_out_shares(layout, *_held_out_options(cfg))
    names = [split] if split else ["test", "val"]
    for name in names:
        if name in shares or (name == "train" and shares):
            found = discover(root, None, *_held_out_options(cfg))
            index = {c: i for i, c in enumerate(cfg[CONFIG.classes])}
            files = found.splits[name]
            unknown = sorted({found.classes[k] for k in files.labels} - set(index))
            if unknown:
                raise ThawlineError(f"class '{unknown[0]}' in {found.split_dir(name)} is not one of the run's "
                                    "classes; pass --split DIR with the run's classes")  # fmt: skip
            return name, found.split_dir(name), (files.paths, [index[found.classes[k]] for k in files.labels])
        if name in layout.dirs:
            return name, layout.dirs[name], None
    raise ThawlineError(f"the run's data folder '{root}' has no {names[0]}/ split; pass --split val or --split DIR")


def _held_out_options(cfg: dict[str, Any]) -> tuple[float | None, float | None]:
    """The run's --val-split and --test-split (unset, or a run saved before they existed: None, the defaults)."""
    return cfg.get(CONFIG.val_split), cfg.get(CONFIG.test_split)


# The fix a failed evaluation write names: `evaluate` writes into the run folder and has no --out to send it elsewhere.
EVALUATE_ELSEWHERE = "evaluate a copy of the run folder on a disk with room"


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str | None = None,
    *,
    which: str = "best",
    batch_size: int = 64,
    device: str | None = "cpu",
    workers: int | None = None,
    write: bool = True,
    tta: bool = False,
) -> Evaluation:
    """Accuracy, per-class P/R/F1 and confusion matrix of a run's checkpoint on a split or a labelled folder.

    Writes evaluation.json (the latest evaluation), evaluation_<split>.json and its per-image rows
    evaluation_<split>.csv into the run folder when `write` (`split`: test/val/train, or folder-<name> for a
    folder). The training run's own predictions.csv and predictions_val.csv, which the report reads, stay as
    training wrote them. `tta`: each image's probabilities averaged with its mirror image's (files tagged _tta)."""
    runtime.keep_freed_memory()
    dev = pick_device(device)
    model, cfg = load_run(run_dir, which, dev)
    check_tta(cfg, tta)
    out = run_folder(run_dir)
    name, folder, files = resolve_split(cfg, split)
    result = evaluate_loaded(
        model, cfg, dev, out, name, folder, batch_size=batch_size, workers=workers, tta=tta, files=files
    )
    if write:
        text = json.dumps(result.report, indent=2)
        tag = evaluation_tag(name, split) + ("_tta" if tta else "")
        targets = [out / "evaluation.json", out / f"evaluation_{tag}.json"]
        for target in targets:
            write_text_atomic(target, text, elsewhere=EVALUATE_ELSEWHERE)
        rows = out / f"evaluation_{tag}.csv"
        write_predictions(
            rows, name, result.paths, result.labels, result.logits.numpy(), result.classes, EVALUATE_ELSEWHERE
        )
        result.files = [*targets, rows]
    return result


def evaluate_loaded(
    model: nn.Module,
    cfg: dict[str, Any],
    dev: torch.device,
    out: Path,
    name: str,
    folder: Path,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    tta: bool = False,
    files: SplitFileList | None = None,
) -> Evaluation:
    """A loaded run model (`load_run`) on one labelled folder, or on `files` (paths, labels) from it: logits of
    every image that decodes (with `tta`, averaged with its mirror image's), and the report; nothing written."""
    check_batch_size(batch_size)
    classes = list(cfg[CONFIG.classes])
    found: list[Skipped] = []
    paths, labels = files if files is not None else labelled_files(folder, classes, found)
    prep = Preprocess.from_config(cfg)
    # The decode-once cache: the same pixels training saw, and no second decode of a split it already decoded.
    # the run's own cache (config.yaml's cache_dir) unless told otherwise: the split training decoded is not decoded
    # again, and nothing lands in a cache the run never used
    where = cache_dir or cfg.get(CONFIG.cache_dir) or default_cache_dir()
    cache = build_image_cache(paths, prep.img_size, prep.interpolation, where, workers)
    rows = np.flatnonzero(cache.ok)
    if len(rows) == 0:
        raise ThawlineError(
            f"no image in {folder} could be decoded (e.g. '{cache.bad[0][0]}': {cache.bad[0][1]}); "
            f"fix or replace the files (`thawline data check` lists them all)"
        )
    chunks = [
        logits_of(model, prep.to_tensor(cache.store.read(rows[i : i + batch_size])), dev, tta)
        for i in range(0, len(rows), batch_size)
    ]
    cache.store.close()
    result = Evaluation(
        run_dir=out,
        split=name,
        folder=folder,
        classes=classes,
        paths=[paths[i] for i in rows],
        labels=np.asarray(labels, dtype=np.int64)[rows],
        logits=torch.cat(chunks),
        skipped=[(f.path, f.reason) for f in found] + list(cache.bad),
        tta=tta,
    )
    result.report = evaluation_report(result, cfg)
    return result


def evaluate_folders(
    run_dir: str | os.PathLike,
    folders: dict[str, Path],
    *,
    which: str = "best",
    batch_size: int = 64,
    device: str | None = "cpu",
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Evaluation]:
    """A run's checkpoint, loaded once, on several labelled folders ({name: folder}), e.g. the shifted sets of
    `compare --shift-test`; nothing written."""
    runtime.keep_freed_memory()
    dev = pick_device(device)
    model, cfg = load_run(run_dir, which, dev)
    out = run_folder(run_dir)
    return {
        name: evaluate_loaded(
            model, cfg, dev, out, name, Path(folder), batch_size=batch_size, workers=workers, cache_dir=cache_dir
        )
        for name, folder in folders.items()
    }


def evaluation_tag(name: str, split: str | None) -> str:
    """The file-name part of an evaluation: the split (test, val, train), or folder-<name> for a labelled folder
    (so a folder named like a split never replaces that split's files)."""
    if split is None or split in ("test", "val", "train"):
        return name
    return "folder-" + re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def evaluation_report(ev: Evaluation, cfg: dict[str, Any]) -> dict[str, Any]:
    labels = torch.as_tensor(ev.labels)
    probs = torch.softmax(ev.logits, 1)
    conf, pred = probs.max(1)
    preds = pred.numpy()
    k = len(ev.classes)
    pcm = per_class_metrics(ev.labels, preds, k)
    correct = (preds == ev.labels).astype(np.int64)
    return {
        "split": ev.split,
        "folder": str(ev.folder),
        "checkpoint": cfg.get("checkpoint"),
        "checkpoint_epoch": cfg.get("checkpoint_epoch"),
        "model": cfg[CONFIG.model],
        "classes": ev.classes,
        "num_images": len(ev.paths),
        "tta": ev.tta,
        "accuracy": round(accuracy(ev.labels, preds), 6),
        "loss": round(float(torch.nn.functional.cross_entropy(ev.logits, labels)), 6),
        "ece": round(calibration(conf.numpy(), correct).ece, 6),
        "macro": {k_: round(v, 6) if isinstance(v, float) else v for k_, v in pcm.macro().items()},
        "weighted": {k_: round(v, 6) if isinstance(v, float) else v for k_, v in pcm.weighted().items()},
        "per_class": {
            c: {
                "precision": round(float(pcm.precision[i]), 6),
                "recall": round(float(pcm.recall[i]), 6),
                "f1": round(float(pcm.f1[i]), 6),
                "support": int(pcm.support[i]),
            }
            for i, c in enumerate(ev.classes)
        },
        "confusion_matrix": confusion_matrix(ev.labels, preds, k).tolist(),
        "skipped": [{"path": p, "reason": r} for p, r in ev.skipped],
    }


def format_evaluation(ev: Evaluation) -> str:
    r = ev.report
    lines = [
        f"{ev.split}{' (mirror-averaged)' if ev.tta else ''}: {r['num_images']} images, "
        f"accuracy {r['accuracy']:.2%}, loss {r['loss']:.4f}, "
        f"macro F1 {r['macro']['f1']:.3f}, ECE {r['ece']:.3f}"
    ]
    width = max(len(c) for c in ev.classes)
    lines.append(f"  {'class':<{width}}  precision  recall     f1  support")
    for c, m in r["per_class"].items():
        lines.append(f"  {c:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    for p, reason in ev.skipped:
        lines.append(f"skipped {p}: {reason}")
    return "\n".join(lines)
