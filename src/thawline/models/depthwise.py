"""Depthwise convolutions with a fast weight gradient on small feature maps (CPU).

oneDNN computes a depthwise convolution's weight gradient slowly when the padding is as wide as the feature map
(a 5x5 kernel on the 2x2 and 4x4 maps of EfficientNet's last stages at 64-112 px input): 12-21 ms per call on the
2-core dev machine, against 2-3 ms for a sum over the k*k shifted products computed here, and it dominated the
training step of a partially frozen EfficientNet at 64 px. Forward and input gradient stay with oneDNN; the
weight gradient uses the shifts only where the map is that small. Same modules, parameters and state_dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _shifted_products_weight_grad(
    x: torch.Tensor, grad: torch.Tensor, kernel: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """d(loss)/d(weight) of a stride-1 depthwise conv: w[c, i, j] = sum over batch and positions of x shifted by
    (i, j) times the output gradient."""
    kh, kw = kernel
    h, w = grad.shape[-2:]
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    taps = [(xp[:, :, i : i + h, j : j + w] * grad).sum((0, 2, 3)) for i in range(kh) for j in range(kw)]
    return torch.stack(taps, 1).view(-1, 1, kh, kw)


class _DepthwiseSmallMap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                None,
                [1, 1],
                list(ctx.padding),
                [1, 1],
                False,
                [0, 0],
                x.shape[1],
                [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = _shifted_products_weight_grad(x, grad, tuple(weight.shape[-2:]), ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class DepthwiseConv2d(nn.Conv2d):
    """A stride-1 depthwise nn.Conv2d whose weight gradient is the shifted-products sum on small maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = self.padding  # type: ignore[misc]
        small = 2 * pad_h >= x.shape[-2] and 2 * pad_w >= x.shape[-1]
        if small and x.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad:
            return _DepthwiseSmallMap.apply(x, self.weight, self.bias, (pad_h, pad_w))
        return super().forward(x)


def _eligible(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.groups == m.in_channels == m.out_channels
        and m.stride == (1, 1)
        and m.dilation == (1, 1)
        and isinstance(m.padding, tuple)
        and m.padding_mode == "zeros"
    )


def use_fast_depthwise(model: nn.Module) -> int:
    """Swap every stride-1 depthwise nn.Conv2d for DepthwiseConv2d (same parameters); returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _eligible(child):
                c = child.in_channels
                fast = DepthwiseConv2d(
                    c, c, child.kernel_size, padding=child.padding, groups=c, bias=child.bias is not None, device="meta"
                )
                fast.weight, fast.bias = child.weight, child.bias  # the same Parameters: optimizer, checkpoints agree
                fast.train(child.training)
                setattr(parent, name, fast)
                swapped += 1
    return swapped
