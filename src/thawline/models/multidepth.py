"""A linear head over features pooled from every depth of the backbone (Head2Toe, Evci et al., ICML 2022).

The model's classifier is replaced by a `MultiDepthHead`: forward hooks on the module that ends each body stage
keep that stage's globally pooled output for the current forward pass, and the head concatenates them with its
own input (the pooled last features), each depth standardised on its own (a parameter-free layer norm, so no depth
dominates by its width or scale), before one linear layer. A frozen body then gives a probe over every depth; on
cached features (`models.split_at`: the gathered vector is the cached prefix output) it trains in milliseconds.
Head2Toe adds group-lasso feature selection; this head keeps all pooled features and the run's weight decay.

The hooks belong to the head (bound to it, so a checkpoint needs nothing but the state dict), and the model is
built the same way for training (`prepare.build_run_model`) and for inference (`inference.load_run`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from thawline.core.errors import ThawlineError
from thawline.models.stages import StageMap, eval_mode, pool_output, stage_map, stage_outputs


class MultiDepthHead(nn.Module):
    """fc(concat(layer_norm(pool(output of stage k)) for every body stage k but the last, layer_norm(input))): the
    last stage enters as the classifier's input, pooled (and normed) as the model's own head does."""

    def __init__(self, dims: list[int], in_features: int, num_classes: int) -> None:
        super().__init__()
        self.dims = list(dims)
        self.in_features = in_features
        self.fc = nn.Linear(sum(dims) + in_features, num_classes)
        self._pooled: dict[int, torch.Tensor] = {}

    def capture(self, depth: int, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self._pooled[depth] = pool_output(output)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The multi-depth feature vector of the forward pass that produced `x` (the pooled last features)."""
        missing = [d for d in range(len(self.dims)) if d not in self._pooled]
        if missing:
            raise RuntimeError("the multi-depth head ran without its stage outputs (the backbone did not run)")
        parts = [self._pooled[d] for d in range(len(self.dims))] + [x.flatten(1).float()]
        self._pooled = {}  # one forward pass's worth: nothing kept between batches
        return torch.cat([F.layer_norm(p, p.shape[-1:]) for p in parts], dim=1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gather(x))


def classifier_name(model: nn.Module) -> str:
    """The attribute that holds a timm model's classifier (`classifier`, `fc`, `head.fc`, ...)."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    modules = dict(model.named_modules())
    if not name or modules.get(name) is not model.get_classifier():
        name = next((n for n, m in modules.items() if m is model.get_classifier()), None)
    if not name:
        raise ThawlineError(f"cannot find the classifier of {type(model).__name__} to put a multi-depth head there")
    return name


def install_multidepth_head(model: nn.Module, smap: StageMap, img_size: int) -> StageMap:
    """Replace `model`'s classifier by a `MultiDepthHead` fed by every body stage; returns the new stage map.
    The head's initialisation draws from the global RNG, as a fresh timm head does (seed before calling)."""
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise ThawlineError(
            f"strategy head2toe needs a linear classifier on pooled features; {type(model).__name__} has "
            f"{type(classifier).__name__}"
        )
    device = next(model.parameters()).device
    example = torch.zeros(1, 3, img_size, img_size, device=device)
    names = stage_outputs(model, smap, example)
    if names is None:
        raise ThawlineError(
            f"strategy head2toe cannot tell where the stages of {type(model).__name__} end; it works on the "
            "EfficientNet/MobileNet, ResNet, ConvNeXt and ViT families"
        )
    names = names[:-1]  # the last stage as the classifier sees it: the head's own input (pooled, normed as timm does)
    modules = dict(model.named_modules())
    dims = _pooled_dims(model, [modules[n] for n in names], example)
    head = MultiDepthHead(dims, classifier.in_features, classifier.out_features).to(device)
    for depth, name in enumerate(names):
        modules[name].register_forward_hook(functools.partial(MultiDepthHead.capture, head, depth))
    parent, _, attr = classifier_name(model).rpartition(".")
    setattr(modules[parent] if parent else model, attr, head)
    new_map = stage_map(model)
    if set(new_map.params[new_map.head]) != {n for n, p in model.named_parameters() if _in(p, head)}:
        raise ThawlineError(f"the multi-depth head of {type(model).__name__} does not form its own stage")
    return new_map


def _pooled_dims(model: nn.Module, ends: list[nn.Module], example: torch.Tensor) -> list[int]:
    dims: dict[int, int] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, d=d: dims.__setitem__(d, pool_output(out).shape[1]))
        for d, m in enumerate(ends)
    ]
    try:
        with eval_mode(model), torch.inference_mode():
            model.forward_features(example)
    finally:
        for h in handles:
            h.remove()
    return [dims[d] for d in range(len(ends))]


def _in(p: torch.Tensor, module: nn.Module) -> bool:
    return any(p is q for q in module.parameters())
