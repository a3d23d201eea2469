"""The small-map depthwise weight gradient equals oneDNN's, and swapping modules keeps the model the same."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from thawline.models.depthwise import DepthwiseConv2d, use_fast_depthwise


@pytest.mark.parametrize("size,kernel", [(2, 5), (4, 5), (2, 3), (7, 5), (4, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_gradients_match_the_plain_convolution(size: int, kernel: int, channels_last: bool, bias: bool) -> None:
    torch.manual_seed(0)
    plain = nn.Conv2d(6, 6, kernel, padding=kernel // 2, groups=6, bias=bias)
    model = nn.Sequential(copy.deepcopy(plain))
    assert use_fast_depthwise(model) == 1 and isinstance(model[0], DepthwiseConv2d)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(5, 6, size, size).contiguous(memory_format=fmt)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn(5, 6, size, size)
    ((plain(x1) - target) ** 2).sum().backward()
    ((model(x2) - target) ** 2).sum().backward()
    torch.testing.assert_close(model(x), plain(x))
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(model[0].weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    if bias:
        torch.testing.assert_close(model[0].bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)


def graph_nodes(t: torch.Tensor) -> set[str]:
    visited, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in visited:
            visited.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
    return {type(fn).__name__ for fn in visited}


def test_swap_keeps_parameters_state_dict_and_training_step() -> None:
    torch.manual_seed(0)
    reference = timm.create_model("test_convnext", num_classes=3)  # 7x7 depthwise convs
    model = copy.deepcopy(reference)
    params_before = dict(model.named_parameters())
    swapped = use_fast_depthwise(model)
    assert swapped > 0
    assert sum(isinstance(m, DepthwiseConv2d) for m in model.modules()) == swapped
    assert list(model.state_dict()) == list(reference.state_dict())
    assert all(params_before[n] is p for n, p in model.named_parameters())  # the optimizer keeps the same tensors
    # Strided depthwise convs (and non-depthwise convs) are left alone.
    assert all(m.stride == (1, 1) for m in model.modules() if isinstance(m, DepthwiseConv2d))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])  # 32 px: maps of 8, 4, 2 and 1 px
    for m in (reference, model):
        m.train()
        loss = nn.functional.cross_entropy(m(x), y)
        if m is model:
            assert "_DepthwiseSmallMapBackward" in graph_nodes(loss)  # the small maps took the fast path
        loss.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
