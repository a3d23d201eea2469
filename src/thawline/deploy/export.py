"""ONNX export of a run's model, checked in onnxruntime against PyTorch on the run's own images.

Writes model.onnx and preprocessing.json (everything a deployment needs to feed it: size, interpolation,
mean/std, classes, input name and layout). Uses the TorchScript-based exporter (`dynamo=False`): it needs no
extra package, and with the pinned torch it gives logits equal to PyTorch's to ~1e-6.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thawline.core.atomic import atomic_path, write_error, write_text_atomic, writing
from thawline.core.errors import ThawlineError
from thawline.core.runformat import CONFIG
from thawline.data.images import BadImage
from thawline.data.splits import find_layout
from thawline.deploy.load import Preprocess, load_run, run_folder
from thawline.deploy.predict import image_files

TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17


@dataclass
class ExportResult:
    onnx_path: Path
    preprocessing_path: Path
    max_abs_diff: float
    inputs: str  # where the check inputs came from: "N images from DIR" or "N random inputs"
    batch_sizes: list[int]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff < TOLERANCE


def check_inputs(cfg: dict[str, Any], prep: Preprocess, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, str]:
    """`n` preprocessed images from the run's test (else val, else train) folder, spread over its classes; random
    if none."""
    for folder in _data_folders(cfg.get(CONFIG.data)):
        files = list(image_files(folder))
        picked = [files[i] for i in np.linspace(0, len(files) - 1, min(n * 2, len(files))).astype(int)]
        rows = []
        for path in dict.fromkeys(picked):
            try:
                rows.append(prep.decode(path))
            except BadImage:
                continue
            if len(rows) == n:
                break
        if rows:
            return prep.to_tensor(np.stack(rows)), f"{len(rows)} images from {folder}"
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, prep.img_size, prep.img_size, generator=gen), f"{n} random inputs (no run data found)"


def _data_folders(data: str | None) -> list[Path]:
    """The run's split folders to draw check images from, test first (train's when val is held out of it)."""
    if not data or not Path(data).is_dir():
        return []
    try:
        layout = find_layout(Path(data))
    except ThawlineError:
        return []
    return [layout.dirs[s] for s in ("test", "val") if s in layout.dirs] or [layout.train_dir]


def export_onnx(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    dynamic_batch: bool = False,
    which: str = "best",
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> ExportResult:
    """Export the run's checkpoint to ONNX and compare it with PyTorch in onnxruntime; only a checked file replaces
    `out` (and preprocessing.json beside it): a failed check raises and leaves an earlier export untouched."""
    model, cfg = load_run(run_dir, which, "cpu")
    model = model.to(memory_format=torch.contiguous_format).eval()
    prep = Preprocess.from_config(cfg)
    onnx_path = Path(out) if out else run_folder(run_dir) / "model.onnx"
    if onnx_path.suffix != ".onnx":
        onnx_path = onnx_path / "model.onnx" if onnx_path.is_dir() else onnx_path.with_suffix(".onnx")
    with writing(onnx_path.parent):
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
    size = prep.img_size
    dummy = torch.zeros(1, 3, size, size)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with atomic_path(onnx_path) as tmp:  # renamed into place only when the block ends without an error
        _export_to(tmp, model, dummy, axes, opset, cfg, prep, onnx_path)
        # Checked before it replaces anything: a failed check leaves an earlier good export where it was.
        diff, source, batch_sizes = float("nan"), "not checked", []
        if check:
            diff, source, batch_sizes = _check(model, tmp, cfg, prep, dynamic_batch)
        if check and not diff < TOLERANCE:
            kept = f"; the earlier {onnx_path} is unchanged" if onnx_path.exists() else f"; {onnx_path} not written"
            raise ThawlineError(
                f"ONNX output differs from PyTorch by {diff:.3g} (limit {TOLERANCE:g}) on {source}{kept}"
            )
        prep_path = onnx_path.with_name("preprocessing.json")
        _write_preprocessing(prep_path, onnx_path, cfg, prep, dynamic_batch, opset)
    return ExportResult(onnx_path, prep_path, diff, source, batch_sizes)


def _export_to(
    tmp: Path, model: torch.nn.Module, dummy: torch.Tensor, axes: dict[str, Any] | None, opset: int,
    cfg: dict[str, Any], prep: Preprocess, onnx_path: Path,
) -> None:  # fmt: skip
    """The ONNX file (with its metadata) at `tmp`; exporter failures are one line naming the model."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy-exporter deprecation and tracer notes are not for users
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        _add_metadata(tmp, cfg, prep)
    except OSError as e:
        raise write_error(onnx_path, e) from None
    except Exception as e:  # exporter failures (unsupported op, ...) are one line, naming the model
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ThawlineError(f"ONNX export of {cfg['model']} failed ({type(e).__name__}: {first})") from None


def _check(
    model: torch.nn.Module, path: Path, cfg: dict[str, Any], prep: Preprocess, dynamic_batch: bool
) -> tuple[float, str, list[int]]:
    """(largest logit difference, where the inputs came from, batch sizes) of the ONNX file at `path`."""
    x, source = check_inputs(cfg, prep)
    if dynamic_batch and len(x) < 3:
        x = torch.cat([x, x[:1].expand(3 - len(x), -1, -1, -1)])
    batches = [x[:1], x[:3], x] if dynamic_batch else [x[i : i + 1] for i in range(len(x))]
    return parity(model, path, batches), source, sorted({len(b) for b in batches})


def _write_preprocessing(
    prep_path: Path, onnx_path: Path, cfg: dict[str, Any], prep: Preprocess, dynamic_batch: bool, opset: int
) -> None:
    size = prep.img_size
    info = {
        "onnx_file": onnx_path.name,
        "model": cfg[CONFIG.model],
        "checkpoint": cfg.get("checkpoint"),
        "classes": list(cfg[CONFIG.classes]),
        **prep.to_dict(),
        "resize": f"whole image to {size}x{size} (no crop, aspect ratio not kept), PIL {prep.interpolation}",
        "color": "RGB (alpha composited on white, EXIF orientation applied)",
        "normalize": "x = (pixel / 255 - mean) / std per channel",
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "shape": ["batch" if dynamic_batch else 1, 3, size, size],
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch" if dynamic_batch else 1, len(cfg[CONFIG.classes])],
            "meaning": "logits; softmax gives class probabilities in the order of classes",
        },
        "dynamic_batch": dynamic_batch,
        "opset": opset,
    }
    write_text_atomic(prep_path, json.dumps(info, indent=2))


def _add_metadata(path: Path, cfg: dict[str, Any], prep: Preprocess) -> None:
    import onnx

    proto = onnx.load(str(path))
    meta = {"classes": json.dumps(list(cfg[CONFIG.classes])), "preprocessing": json.dumps(prep.to_dict())}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "thawline"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def parity(model: torch.nn.Module, onnx_path: Path, batches: list[torch.Tensor]) -> float:
    """Largest |onnxruntime - PyTorch| logit difference over `batches` (NCHW float32 inputs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - a model onnxruntime rejects is the export's failure, said in one line
        raise ThawlineError(f"onnxruntime cannot load '{onnx_path}' ({str(e).splitlines()[0][:200]})") from None
    worst = 0.0
    for batch in batches:
        with torch.inference_mode():
            ref = model(batch).float().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy().astype(np.float32)})[0]
        if got.shape != ref.shape:
            raise ThawlineError(f"ONNX output has shape {got.shape} for batch {len(batch)}, PyTorch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst
