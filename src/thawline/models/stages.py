"""Stages of a timm model (from its own `group_matcher`), freezing, and the frozen-prefix/trainable-suffix split.

No strategy knows layer names: it selects stage indices, and this module maps them onto parameters and
modules. Body stages are 0..n-1 (stem first); the head (the group holding the classifier) is index n. A phase
may restrict its body stages to parameter kinds (`bias`, `norm`: see `parameter_kinds`); the head trains whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from timm.models import group_parameters
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StageMap:
    names: tuple[str, ...]  # body stage names, then "head"
    params: tuple[tuple[str, ...], ...]  # parameter names per stage, same order

    @property
    def n_stages(self) -> int:
        """Number of body stages (the head is not counted)."""
        return len(self.names) - 1

    @property
    def head(self) -> int:
        return len(self.names) - 1

    def stage_of(self) -> dict[str, int]:
        return {p: i for i, names in enumerate(self.params) for p in names}


def stage_map(model: nn.Module) -> StageMap:
    """Coarse timm groups (ResNet-50: stem, layer1..4, head); the classifier's group becomes the head."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    ordered = [tuple(groups[k]) for k in sorted(groups)]
    classifier = model.get_classifier()
    head_names = {n for n, p in model.named_parameters() if any(p is q for q in classifier.parameters())}
    head_idx = next((i for i, g in enumerate(ordered) if head_names & set(g)), None)
    if head_idx is None or head_idx != len(ordered) - 1:
        # The classifier is not a group of its own at the top: treat it alone as the head.
        ordered = [tuple(n for n in g if n not in head_names) for g in ordered]
        ordered = [g for g in ordered if g] + [tuple(n for n, _ in model.named_parameters() if n in head_names)]
    names = tuple(_stage_name(g[0], i) for i, g in enumerate(ordered[:-1])) + ("head",)
    return StageMap(names, tuple(ordered))


def _stage_name(first_param: str, index: int) -> str:
    if index == 0:
        return "stem"
    parts = first_param.split(".")
    if parts[0] in ("blocks", "stages", "layers", "features") and len(parts) > 1 and parts[1].isdigit():
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def _norm_types() -> tuple[type, ...]:
    """Normalisation layer types: torch's (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm and every
    subclass, such as timm's BatchNormAct2d, LayerNorm2d, GroupNorm1) and timm's own (RmsNorm, SimpleNorm,
    EvoNorm, FilterResponseNorm)."""
    import timm.layers

    torch_types = [nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None)]
    timm_names = (
        "RmsNorm", "RmsNorm2d", "RmsNormFp32", "RmsNorm2dFp32", "SimpleNorm", "SimpleNorm2d", "SimpleNormFp32",
        "SimpleNorm2dFp32", "EvoNorm2dB0", "EvoNorm2dB1", "EvoNorm2dB2", "EvoNorm2dS0", "EvoNorm2dS1", "EvoNorm2dS2",
        "FilterResponseNormAct2d", "FilterResponseNormTlu2d",
    )  # fmt: skip
    timm_types = [getattr(timm.layers, n, None) for n in timm_names]
    return tuple(t for t in [*torch_types, *timm_types] if isinstance(t, type))


def parameter_kinds(model: nn.Module) -> dict[str, frozenset[str]]:
    """The kinds of every parameter, by its full name: `bias` for a parameter its module registers as `bias` (or
    `*_bias`, e.g. attention's in_proj_bias, q_bias); `norm` for the parameters of a normalisation layer, found by
    module type (`_norm_types`). A norm layer's bias is both; a convolution's weight is neither."""
    norms = _norm_types()
    kinds: dict[str, frozenset[str]] = {}
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, norms)
        for local, _ in module.named_parameters(recurse=False):
            k = {"bias"} if local == "bias" or local.endswith("_bias") else set()
            kinds[f"{module_name}.{local}" if module_name else local] = frozenset(k | ({"norm"} if is_norm else set()))
    return kinds


def trainable_names(
    model: nn.Module, smap: StageMap, trainable: set[int] | tuple[int, ...], kinds: tuple[str, ...] = ()
) -> list[str]:
    """The parameters a phase trains, in model order: those of the `trainable` stages, restricted in the body
    stages to `kinds` when given (the head always whole)."""
    stage_of = smap.stage_of()
    wanted = set(trainable)
    of_kind = parameter_kinds(model) if kinds else {}
    names = []
    for name, _ in model.named_parameters():
        stage = stage_of[name]
        if stage not in wanted:
            continue
        if kinds and stage != smap.head and not of_kind.get(name, frozenset()) & set(kinds):
            continue
        names.append(name)
    return names


def apply_freezing(
    model: nn.Module, smap: StageMap, trainable: set[int], bn: str = "frozen", kinds: tuple[str, ...] = ()
) -> int:
    """Set requires_grad per stage (and per parameter kind) and the train/eval mode of frozen modules; returns the
    trainable parameter count.

    Frozen parameters get requires_grad=False, so autograd records nothing for a frozen prefix (no saved
    activations, no backward through it). With bn="frozen" every module whose parameters are all frozen goes to
    eval(): BatchNorm statistics stay untouched and dropout is off there. bn="eval" also puts the BatchNorm layers
    of training stages in eval mode (their affine weights still train).

    `kinds` (e.g. ("bias",)) trains only those parameter kinds inside the trainable body stages. The rule above
    then makes a selected stage a training stage for the `bn` policy: its BatchNorm layers keep a trainable bias
    (and weight, under norm), so with bn="frozen" they use batch statistics as in any training stage, and the
    blocks holding them keep dropout on; modules whose parameters all stay frozen (a convolution under norm) go to
    eval, which changes nothing for them.
    """
    selected = set(trainable_names(model, smap, trainable, kinds))
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in selected)
        count += p.numel() if p.requires_grad else 0
    model.train()
    for _, module in model.named_modules():
        own = list(module.parameters())
        if not own or any(p.requires_grad for p in own):
            continue
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if bn == "frozen" or not is_bn:
            module.eval()
    if bn in ("train", "eval"):  # train: frozen stages' BN keep updating; eval: no BN uses batch statistics
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(bn == "train")
    return count


@contextmanager
def eval_mode(model: nn.Module | None) -> Iterator[None]:
    """Every module of `model` in eval mode inside the block; each module's own train/eval mode restored after
    (a plain model.train() would undo the phase's freezing). None: nothing to switch."""
    modes = [(m, m.training) for m in model.modules()] if model is not None else []
    if model is not None:
        model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Split:
    """`prefix` runs frozen stages (no grad, eval); `suffix` maps its output to logits and holds all trainables."""

    first_trainable: int
    prefix: Forward
    suffix: Forward
    dropout: float = 0.0


def split_at(model: nn.Module, smap: StageMap, first_trainable: int) -> Split | None:
    """The model as prefix (stages < first_trainable) + suffix, or None when this model cannot be split there.

    Head-only works for every timm model (forward_features / forward_head). Splitting inside the body needs
    the model's forward order, known here for the EfficientNet/MobileNet and ResNet families.
    """
    if first_trainable <= 0:
        return None
    head_only_classifier = set(smap.params[smap.head]) == {
        n for n, p in model.named_parameters() if any(p is q for q in model.get_classifier().parameters())
    }
    if first_trainable == smap.head:
        if head_only_classifier:
            drop = float(getattr(model, "drop_rate", 0.0) or 0.0)
            classifier = model.get_classifier()
            gather = getattr(classifier, "gather", None)  # a multi-depth head: its frozen part joins the prefix
            if gather is not None:
                return Split(
                    first_trainable,
                    prefix=lambda x: gather(model.forward_head(model.forward_features(x), pre_logits=True)),
                    suffix=classifier.fc,
                    dropout=drop,
                )
            return Split(
                first_trainable,
                prefix=lambda x: model.forward_head(model.forward_features(x), pre_logits=True),
                suffix=classifier,
                dropout=drop,
            )
        return Split(first_trainable, prefix=model.forward_features, suffix=model.forward_head)
    body = _body_modules(model)
    if body is None or len(body) != smap.n_stages:
        return None
    before, after = body[:first_trainable], body[first_trainable:]

    def prefix(x: torch.Tensor) -> torch.Tensor:
        for stage in before:
            x = stage(x)
        return x

    def suffix(x: torch.Tensor) -> torch.Tensor:
        for stage in after:
            x = stage(x)
        return model.forward_head(x)

    return Split(first_trainable, prefix, suffix)


def _body_modules(model: nn.Module) -> list[nn.Module] | None:
    """forward_features as one callable per coarse stage, for families whose forward order we know."""
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet

    if isinstance(model, EfficientNet) and not getattr(model, "grad_checkpointing", False):
        stem = nn.Sequential(model.conv_stem, model.bn1)
        blocks = list(model.blocks)
        last = nn.Sequential(blocks[-1], model.conv_head, model.bn2)
        return [stem, *blocks[:-1], last]
    if isinstance(model, ResNet) and not getattr(model, "grad_checkpointing", False):
        stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
        return [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    return None


def is_suffix(trainable: set[int] | tuple[int, ...], n_total: int) -> bool:
    """True when the trainable stages are exactly a top block (everything from some stage up)."""
    t = sorted(trainable)
    return t == list(range(t[0], n_total))


def stage_drift(model: nn.Module, initial: dict[str, torch.Tensor], smap: StageMap) -> dict[str, float]:
    """Relative L2 change of each stage's weights from their values at the start of the run."""
    params = dict(model.named_parameters())
    drift = {}
    for name, names in zip(smap.names, smap.params, strict=True):
        num = sum(float((params[n].detach().cpu() - initial[n].cpu()).double().pow(2).sum()) for n in names)
        den = sum(float(initial[n].cpu().double().pow(2).sum()) for n in names)
        drift[name] = round((num / den) ** 0.5, 6) if den > 0 else 0.0
    return drift


# ---- where each stage ends: its output module, pooled ------------------------------------------------------------


def pool_output(out: Any) -> torch.Tensor:
    """Global average pool of a stage output: NCHW over H, W; tokens (B, N, C) over N; (B, C) as is."""
    if isinstance(out, (tuple, list)):
        out = next(o for o in out if isinstance(o, torch.Tensor))
    if out.ndim == 4:
        return out.float().mean(dim=(2, 3))
    if out.ndim == 3:
        return out.float().mean(dim=1)
    return out.float().flatten(1)


def stage_outputs(model: nn.Module, smap: StageMap, example: torch.Tensor) -> list[str] | None:
    """For each body stage, the name of the module whose output is that stage's output, or None if not found.

    Candidates are the largest modules whose parameters all lie in one stage, plus parameter-free children of
    mixed modules (an activation or pooling between stages, which belongs to the stage that ran before it). A
    dry run orders them; the last to finish in each stage gives its output."""
    stage_of = smap.stage_of()
    stages_in: dict[str, set[int]] = {}
    for name, module in model.named_modules():
        found = set()
        for pname, _ in module.named_parameters():
            full = f"{name}.{pname}" if name else pname
            if full in stage_of:
                found.add(stage_of[full])
        stages_in[name] = found
    candidates: list[str] = []
    for name, _ in model.named_modules():
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if not name:
            continue
        own, up = stages_in[name], stages_in[parent]
        if (len(own) == 1 and len(up) > 1) or (not own and len(up) > 1):
            candidates.append(name)
    modules = dict(model.named_modules())
    finished: list[str] = []
    handles = [modules[n].register_forward_hook(lambda *_, n=n: finished.append(n)) for n in candidates]
    try:
        with eval_mode(model), torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
    last: dict[int, tuple[int, str]] = {}
    current: int | None = None
    for order, name in enumerate(finished):
        own = stages_in[name]
        stage = next(iter(own)) if own else current
        if stage is None or stage == smap.head:
            continue
        current = stage
        last[stage] = (order, name)
    if sorted(last) != list(range(smap.n_stages)):
        return None
    orders = [last[s][0] for s in range(smap.n_stages)]
    if orders != sorted(orders):
        return None
    return [last[s][1] for s in range(smap.n_stages)]
