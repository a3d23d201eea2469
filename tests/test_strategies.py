"""Strategies bound to tiny timm models: which stages train in every phase, param groups, BN, optimizer state."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from thawline.core.config import make_config
from thawline.core.errors import ThawlineError
from thawline.models.stages import apply_freezing, split_at, stage_map
from thawline.training import engine
from thawline.training.strategies import (
    STRATEGIES,
    describe,
    get_strategy,
    load_strategies_file,
    parse_selector,
    resolve,
    split_budget,
)

MODELS = ["test_efficientnet", "test_resnet"]


def tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=3)


def trainable_stages(model: nn.Module, smap) -> set[int]:
    stage_of = smap.stage_of()
    return {stage_of[n] for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", MODELS)
def test_stages_come_from_group_matcher(name: str) -> None:
    model = tiny(name)
    smap = stage_map(model)
    assert smap.names[0] == "stem" and smap.names[-1] == "head"
    # every parameter belongs to exactly one stage, and the head holds exactly the classifier
    all_params = [n for g in smap.params for n in g]
    assert sorted(all_params) == sorted(n for n, _ in model.named_parameters())
    classifier = {id(p) for p in model.get_classifier().parameters()}
    head = dict(model.named_parameters())
    assert {id(head[n]) for n in smap.params[smap.head]} >= classifier


def test_resnet50_and_lite0_stage_counts() -> None:
    assert stage_map(timm.create_model("resnet50")).names == ("stem", "layer1", "layer2", "layer3", "layer4", "head")
    assert stage_map(timm.create_model("tf_efficientnet_lite0")).n_stages == 8


EXPECTED = {  # strategy -> per phase, trainable stages as a function of n body stages (head = n)
    "head-only": lambda n: [{n}],
    "two-phase": lambda n: [{n}, set(range(n + 1))],
    "layer-wise": lambda n: [{n - 1, n}, set(range(n + 1))],
    "partial": lambda n: [set(range(round(2 * n / 3), n + 1))],
    "full": lambda n: [set(range(n + 1))],
    "scratch": lambda n: [set(range(n + 1))],
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_requires_grad_per_phase(name: str, strategy: str) -> None:
    model = tiny(name)
    smap = stage_map(model)
    phases = resolve(get_strategy(strategy), smap.n_stages, budget=len(STRATEGIES[strategy].phases))
    expected = EXPECTED[strategy](smap.n_stages)
    assert [set(p.trainable) for p in phases] == expected
    for phase, stages in zip(phases, expected, strict=True):
        count = apply_freezing(model, smap, set(phase.trainable))
        assert trainable_stages(model, smap) == stages
        assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", MODELS)
def test_gradual_thaws_one_stage_per_phase_from_the_top(name: str) -> None:
    smap = stage_map(tiny(name))
    n = smap.n_stages
    phases = resolve(get_strategy("gradual"), n, budget=n + 1)
    assert [set(p.trainable) for p in phases] == [set(range(n - k, n + 1)) for k in range(n + 1)]
    # a short budget thaws in fewer, larger steps and still ends with every stage
    short = resolve(get_strategy("gradual"), n, budget=3)
    assert len(short) == 3 and set(short[0].trainable) == {n} and set(short[-1].trainable) == set(range(n + 1))
    assert sum(p.epochs for p in short) == 3


def test_budget_split_and_partial_fraction() -> None:
    assert split_budget([1, 1], 5) == [3, 2] or split_budget([1, 1], 5) == [2, 3]
    assert sum(split_budget([1, 3], 7)) == 7
    assert parse_selector("after:1/2", 6) == (3, 4, 5, 6)
    assert parse_selector("after:0", 4) == (0, 1, 2, 3, 4)
    half = get_strategy("partial-1/2")
    assert resolve(half, 6, 2)[0].trainable == (3, 4, 5, 6)
    with pytest.raises(ThawlineError, match="fraction"):
        get_strategy("partial-3/2")
    with pytest.raises(ThawlineError, match="has 2 phases"):
        resolve(get_strategy("two-phase"), 6, 1)


def test_unknown_strategy_lists_close_matches() -> None:
    with pytest.raises(ThawlineError, match="did you mean: two-phase"):
        get_strategy("two-phse")


def test_user_strategy_from_yaml(tmp_path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(
        "strategies:\n  my-plan:\n    description: top two then all\n    phases:\n"
        "      - {train: 'last:2', epochs: 1, lr: 0.001, bn: train}\n"
        "      - {train: all, epochs: 2, lr: 0.0001, layer_decay: 0.7}\n"
    )
    s = load_strategies_file(str(f))["my-plan"]
    phases = resolve(s, 5, 6)
    assert [p.epochs for p in phases] == [2, 4]
    assert phases[0].trainable == (3, 4, 5) and phases[0].bn == "train" and phases[1].layer_decay == 0.7
    f.write_text("strategies:\n  bad:\n    phases:\n      - {train: 'centre', lr: 0.1}\n")
    with pytest.raises(ThawlineError, match="selector"):
        resolve(load_strategies_file(str(f))["bad"], 5, 2)


@pytest.mark.parametrize("name", MODELS)
def test_frozen_batchnorm_stats_do_not_move(name: str) -> None:
    model = tiny(name)
    smap = stage_map(model)
    n = smap.n_stages
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    apply_freezing(model, smap, {n - 1, n}, bn="frozen")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    stage_of = smap.stage_of()
    after = model.state_dict()
    moved_frozen, moved_trainable = [], []
    for key, value in before.items():
        module = key.rsplit(".", 1)[0]
        stage = stage_of.get(module + ".weight")
        changed = not torch.equal(value, after[key])
        (moved_trainable if stage in (n - 1, n) else moved_frozen).append(changed)
    assert not any(moved_frozen), "BatchNorm statistics in frozen stages changed"
    assert any(moved_trainable), "BatchNorm statistics in training stages should update"
    # frozen parameters get no gradient at all
    frozen = [p for n_, p in model.named_parameters() if stage_of[n_] not in (n - 1, n)]
    assert all(p.grad is None for p in frozen)


def test_bn_train_policy_updates_frozen_stats() -> None:
    model = tiny("test_resnet")
    smap = stage_map(model)
    apply_freezing(model, smap, {smap.head}, bn="train")
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(before, model.bn1.running_mean)
    assert not model.bn1.weight.requires_grad


def test_bn_eval_policy_keeps_running_stats_in_training_stages() -> None:
    """bn: eval trains every parameter it is asked to but no BatchNorm uses (or updates) batch statistics."""
    model = tiny("test_resnet")
    smap = stage_map(model)
    n_trainable = apply_freezing(model, smap, set(range(smap.n_stages + 1)), bn="eval")
    assert n_trainable == sum(p.numel() for p in model.parameters())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns, strict=True))
    assert model.bn1.weight.grad is not None  # the affine weights still train


@pytest.mark.parametrize("name", MODELS)
def test_optimizer_keeps_state_and_gains_groups_across_phases(name: str) -> None:
    model = tiny(name)
    smap = stage_map(model)
    config = make_config({"optimizer": "adamw", "weight_decay": 0.05})
    phases = resolve(get_strategy("layer-wise"), smap.n_stages, 2)
    opt = engine.enter_phase(None, model, smap, phases[0], config, 1.0)
    assert {g["stage"] for g in opt.param_groups} == {smap.n_stages - 1, smap.n_stages}
    # no weight decay on 1-d tensors (biases, norm weights)
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups if not g["decay"])
    assert all(g["weight_decay"] == 0.05 for g in opt.param_groups if g["decay"])
    apply_freezing(model, smap, set(phases[0].trainable))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    head_w = model.get_classifier().weight
    moment = opt.state[head_w]["exp_avg"].clone()
    step = int(opt.state[head_w]["step"])

    opt2 = engine.enter_phase(opt, model, smap, phases[1], config, 1.0)
    assert opt2 is opt, "phase change must not rebuild the optimizer"
    assert torch.equal(opt.state[head_w]["exp_avg"], moment) and int(opt.state[head_w]["step"]) == step
    assert {g["stage"] for g in opt.param_groups} == set(range(smap.n_stages + 1))
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))
    assert all(g["lr"] == pytest.approx(1e-4) for g in opt.param_groups)


def test_layer_decay_scales_lr_per_stage() -> None:
    model = tiny("test_resnet")
    smap = stage_map(model)
    s = get_strategy("full")
    phase = resolve(s, smap.n_stages, 1)[0]
    phase = type(phase)(**{**phase.to_dict(), "layer_decay": 0.5})
    opt = engine.enter_phase(None, model, smap, phase, make_config({}), 1.0)
    lrs = {g["stage"]: g["lr"] for g in opt.param_groups}
    assert lrs[smap.head] == pytest.approx(phase.lr)
    assert lrs[smap.head - 2] == pytest.approx(phase.lr * 0.25)


def test_head_lr_mult_gives_the_head_its_own_multiple_on_top_of_layer_decay(tmp_path: Path) -> None:
    model = tiny("test_resnet")
    smap = stage_map(model)
    (tmp_path / "s.yaml").write_text(
        "fresh-head:\n  phases: [{train: all, lr: 1.0e-4, layer_decay: 0.5, head_lr_mult: 10}]\n"
    )
    s = load_strategies_file(str(tmp_path / "s.yaml"))["fresh-head"]
    assert "head x10" in describe(s)
    phase = resolve(s, smap.n_stages, 2)[0]
    assert phase.to_dict()["head_lr_mult"] == 10 and type(phase)(**phase.to_dict()) == phase  # saved and read back
    opt = engine.enter_phase(None, model, smap, phase, make_config({}), 1.0)
    lrs = {g["stage"]: g["lr"] for g in opt.param_groups}
    assert lrs[smap.head] == pytest.approx(1e-3)  # the head: 10x the phase LR
    assert lrs[smap.head - 1] == pytest.approx(1e-4 * 0.5)  # the body: the phase LR, decayed per stage
    assert lrs[smap.head - 3] == pytest.approx(1e-4 * 0.125)
    # The default leaves the saved phase as runs saved it before the field existed (resume compares it).
    plain = resolve(get_strategy("layer-wise"), smap.n_stages, 2)[1]
    assert plain.head_lr_mult == 1.0 and "head_lr_mult" not in plain.to_dict()
    (tmp_path / "bad.yaml").write_text("bad:\n  phases: [{train: all, head_lr_mult: 0}]\n")
    with pytest.raises(ThawlineError, match="head_lr_mult 0 must be in"):
        load_strategies_file(str(tmp_path / "bad.yaml"))


def test_lr_schedule_warmup_then_cosine() -> None:
    assert engine.lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert engine.lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert engine.lr_factor(99, 100, 10, "cosine") < 0.05
    assert engine.lr_factor(50, 100, 0, "constant") == 1.0


@pytest.mark.parametrize("name", MODELS)
def test_prefix_suffix_split_equals_full_forward(name: str) -> None:
    model = tiny(name).eval()
    smap = stage_map(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        for first in (1, smap.n_stages // 2, smap.n_stages - 1, smap.head):
            split = split_at(model, smap, first)
            assert split is not None
            torch.testing.assert_close(split.suffix(split.prefix(x)), full)


def test_evaluate_uses_eval_mode_and_restores_phase_modes() -> None:
    model = tiny("test_resnet")
    smap = stage_map(model)
    apply_freezing(model, smap, {smap.n_stages - 1, smap.head})  # training BN in the top stage
    modes = {name: m.training for name, m in model.named_modules()}
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    stats_before = model.layer4[0].bn1.running_mean.clone()
    result = engine.evaluate(model, [(x[:3], y[:3]), (x[3:], y[3:])], torch.device("cpu"), model=model)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(model.layer4[0].bn1.running_mean, stats_before), "evaluation must not update BN stats"
    with torch.no_grad():
        expected = model.eval()(x)
    torch.testing.assert_close(result.logits, expected)
