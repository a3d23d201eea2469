"""Use a trained run: rebuild its model from the checkpoint, preprocess images as training did, predict, evaluate.

`load_run(run_dir)` gives the timm model with the run's weights (eval mode) and the run's resolved config.
Preprocessing is the run's own: whole image resized to img_size x img_size with its interpolation (no crop,
exactly `thawline.images.decode_resized`, as training decoded), then (pixel/255 - mean) / std, NCHW float32.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from thawline import runtime
from thawline.atomic import write_text_atomic
from thawline.checkpoint import load_checkpoint
from thawline.data import Normalize, discover
from thawline.errors import ThawlineError
from thawline.files import Skipped, Walker, printable, walk_images
from thawline.images import BadImage, decode_resized
from thawline.metrics import accuracy, calibration, confusion_matrix, per_class_metrics, write_predictions
from thawline.splits import held_out_shares, training_layout

CHECKPOINTS = ("best", "last")
REQUIRED_KEYS = ("model", "classes", "img_size", "interpolation", "mean", "std")


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
    if (path / "summary.json").is_file() and not (path / "config.yaml").is_file():
        raise ThawlineError(f"'{path}' looks like a compare folder; pass one of its strategy sub-folders")
    raise ThawlineError(f"run folder '{path}' has no {which}.pt checkpoint; train into it first (`thawline train`)")


def run_folder(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir)
    return path.parent if path.is_file() else path


def load_run(
    run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode with the checkpoint's weights, the run's resolved config) for a run folder or .pt file."""
    import timm

    from thawline.weights import check_model_name

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
    check_model_name(cfg["model"])
    classes = list(cfg["classes"])
    model = timm.create_model(
        cfg["model"], pretrained=False, num_classes=len(classes), drop_rate=float(cfg.get("drop_rate") or 0.0)
    )
    if cfg.get("strategy_head", "linear") == "multi-depth":  # head2toe: the head over every stage, as trained
        from thawline.models import stage_map
        from thawline.multidepth import install_multidepth_head

        install_multidepth_head(model, stage_map(model), int(cfg.get("img_size") or 224))
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
            f"'{path}' does not fit {cfg['model']} with {len(classes)} classes: {'; '.join(what)}; "
            "the checkpoint and its config disagree (was the file replaced?)"
        )
    model.load_state_dict(weights)
    model.to(device).eval()
    cfg = {**cfg, "checkpoint": str(path), "checkpoint_epoch": state.get("global_epoch")}
    return model, cfg


def _config_yaml(folder: Path) -> dict[str, Any]:
    from thawline.config import load_yaml_mapping

    if not (folder / "config.yaml").is_file():
        raise ThawlineError(f"'{folder}' has no config.yaml and its checkpoint records none; not a thawline run")
    return load_yaml_mapping(str(folder / "config.yaml"))


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
        return cls(int(cfg["img_size"]), str(cfg["interpolation"]), tuple(cfg["mean"]), tuple(cfg["std"]))

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
    if tta and not cfg.get("hflip", True):
        raise ThawlineError(
            "--tta averages each image with its mirror image, but this run was trained without flips (--no-hflip: "
            "a mirrored image may mean something else in this data); drop --tta"
        )


# ---- finding images ----------------------------------------------------------------------------------------


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ThawlineError(f"--batch-size {batch_size}: must be at least 1")


def image_files(folder: str | os.PathLike, skipped: list[Skipped] | None = None) -> list[str]:
    """Image files below `folder` (recursive, sorted, by extension); what is not one goes to `skipped` with why."""
    # no labels here: a link anywhere is followed (each real file once)
    return list(walk_images(folder, [] if skipped is None else skipped, confined=False))


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
    data = cfg.get("data")
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
            index = {c: i for i, c in enumerate(cfg["classes"])}
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
    return cfg.get("val_split"), cfg.get("test_split")


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
    from thawline.cache import build_image_cache, default_cache_dir

    check_batch_size(batch_size)
    classes = list(cfg["classes"])
    found: list[Skipped] = []
    paths, labels = files if files is not None else labelled_files(folder, classes, found)
    prep = Preprocess.from_config(cfg)
    # The decode-once cache: the same pixels training saw, and no second decode of a split it already decoded.
    # the run's own cache (config.yaml's cache_dir) unless told otherwise: the split training decoded is not decoded
    # again, and nothing lands in a cache the run never used
    where = cache_dir or cfg.get("cache_dir") or default_cache_dir()
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
        "model": cfg["model"],
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
    classes = list(cfg["classes"])
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
