"""Strategies from the literature (issue 17): new selectors (first:K, stages:A-B, middle, @bias/@norm parameter kinds),
the registered recipes bound to tiny timm models (requires_grad, optimizer groups, LRs), the feature cache's
eligibility for partly trained stages, and exact kill/resume for bitfit and lp-ft."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import make_image_folder, tiny_config
from test_resume import assert_same_run, command
from torch import nn

import thawline
from thawline.cli import main
from thawline.comparing.comparison import DEFAULT_STRATEGIES
from thawline.core import faults
from thawline.core.config import make_config, replace
from thawline.core.errors import ThawlineError
from thawline.models.multidepth import MultiDepthHead, install_multidepth_head
from thawline.models.stages import StageMap, apply_freezing, split_at, stage_map
from thawline.training import engine, trainer
from thawline.training.checkpoint import load_checkpoint
from thawline.training.strategies import (
    LITERATURE,
    STRATEGIES,
    Phase,
    ResolvedPhase,
    Strategy,
    get_strategy,
    load_strategies_file,
    resolve,
    select,
    strategy_from_dict,
)

MODELS = ["test_efficientnet", "test_resnet"]
NEW = ["lp-ft", "surgical-first", "surgical-middle", "bitfit", "norm-only", "llrd", "head2toe"]
NORM_TYPES = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)  # what the tiny models hold, found here independently


def tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=3)


def tiny_for(name: str, strategy: str) -> tuple[nn.Module, StageMap]:
    """The tiny model with the head the strategy trains (head2toe: the multi-depth head), and its stage map."""
    model = tiny(name)
    if get_strategy(strategy).head == "multi-depth":
        return model, install_multidepth_head(model, stage_map(model), 32)
    return model, stage_map(model)


def biases(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"}


def norm_params(model: nn.Module) -> set[str]:
    return {
        f"{m_name}.{p_name}"
        for m_name, m in model.named_modules()
        if isinstance(m, NORM_TYPES)
        for p_name, _ in m.named_parameters(recurse=False)
    }


def stage_params(smap, stages) -> set[str]:
    return {n for s in stages for n in smap.params[s]}


def middle_stages(n: int) -> set[int]:
    """The middle body stage, or the two middle ones for an even count (tiny EfficientNet: 6, tiny ResNet: 5)."""
    return {n // 2} if n % 2 else {n // 2 - 1, n // 2}


def expected_trainable(strategy: str, model: nn.Module, smap) -> list[set[str]]:
    """Per phase, the parameter names that must have requires_grad, derived without the code under test."""
    n, head = smap.n_stages, set(smap.params[smap.head])
    everything = {name for name, _ in model.named_parameters()}
    return {
        "lp-ft": [head, everything],
        "surgical-first": [stage_params(smap, {0}) | head],
        "surgical-middle": [stage_params(smap, middle_stages(n)) | head],
        "bitfit": [biases(model) | head],
        "norm-only": [norm_params(model) | head],
        "llrd": [everything],
        "head2toe": [head],
    }[strategy]


# ---- requires_grad per phase ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", NEW)
def test_requires_grad_per_phase(name: str, strategy: str) -> None:
    model, smap = tiny_for(name, strategy)
    phases = resolve(get_strategy(strategy), smap.n_stages, budget=len(LITERATURE[strategy].phases))
    expected = expected_trainable(strategy, model, smap)
    assert len(phases) == len(expected)
    for phase, names in zip(phases, expected, strict=True):
        count = apply_freezing(model, smap, set(phase.trainable), phase.bn, phase.kinds)
        got = {n for n, p in model.named_parameters() if p.requires_grad}
        assert got == names, (phase.train, sorted(got ^ names))
        assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert count < sum(p.numel() for p in model.parameters()) or names == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", MODELS)
def test_bias_and_norm_kinds_are_what_they_say(name: str) -> None:
    """bias: every `bias` (the EfficientNet's squeeze-excite convolutions' too), no norm weight; norm: found by module
    type (BatchNormAct2d is timm's BatchNorm2d subclass), no convolution bias; the head trains whole in both."""
    model = tiny(name)
    smap = stage_map(model)
    head = set(smap.params[smap.head])
    conv_biases = {n for n in biases(model) if ".se." in n}
    assert (name == "test_efficientnet") == bool(conv_biases)  # the EfficientNet has SE biases, the ResNet none
    apply_freezing(model, smap, set(range(smap.n_stages + 1)), kinds=("bias",))
    bias_set = {n for n, p in model.named_parameters() if p.requires_grad}
    apply_freezing(model, smap, set(range(smap.n_stages + 1)), kinds=("norm",))
    norm_set = {n for n, p in model.named_parameters() if p.requires_grad}
    assert conv_biases <= bias_set and not conv_biases & norm_set
    bn_weights = {n for n in norm_params(model) if n.endswith(".weight")}
    assert bn_weights and bn_weights <= norm_set and not bn_weights & bias_set
    assert head <= bias_set and head <= norm_set  # the classifier's weight is neither kind, and trains anyway
    apply_freezing(model, smap, set(range(smap.n_stages + 1)), kinds=("bias", "norm"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == bias_set | norm_set


def test_kinds_within_selected_stages_only() -> None:
    model = tiny("test_resnet")
    smap = stage_map(model)
    n = smap.n_stages
    stages, kinds = select("last:2@norm", n)
    apply_freezing(model, smap, set(stages), kinds=kinds)
    got = {name for name, p in model.named_parameters() if p.requires_grad}
    assert got == (norm_params(model) & stage_params(smap, {n - 2, n - 1})) | set(smap.params[smap.head])


# ---- optimizer param groups ----------------------------------------------------------------------------------


def group_members(opt: torch.optim.Optimizer, active_only: bool = False) -> list[int]:
    return [id(p) for g in opt.param_groups if not active_only or g["lr"] > 0 for p in g["params"]]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", NEW)
def test_optimizer_groups_hold_exactly_the_trainable_parameters(name: str, strategy: str) -> None:
    model, smap = tiny_for(name, strategy)
    config = make_config({"optimizer": "adamw", "weight_decay": 0.05})
    phases = resolve(get_strategy(strategy), smap.n_stages, budget=len(LITERATURE[strategy].phases))
    opt = None
    by_id = {id(p): n for n, p in model.named_parameters()}
    no_decay = biases(model) | norm_params(model)
    for phase in phases:
        apply_freezing(model, smap, set(phase.trainable), phase.bn, phase.kinds)
        opt = engine.enter_phase(opt, model, smap, phase, config, 1.0)
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        members = group_members(opt, active_only=True)
        assert len(members) == len(set(members)), "a parameter in two groups"
        assert set(members) == trainable
        for g in opt.param_groups:
            names = {by_id[id(p)] for p in g["params"]}
            assert g["names"] == [by_id[id(p)] for p in g["params"]]
            if g["decay"]:
                assert g["weight_decay"] == 0.05 and not names & no_decay, "weight decay on a bias or norm weight"
            else:
                assert g["weight_decay"] == 0.0
    # the last phase's optimizer holds nothing else: single-phase strategies never see a frozen parameter
    if len(phases) == 1:
        assert set(group_members(opt)) == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("name", MODELS)
def test_llrd_lr_per_stage(name: str) -> None:
    model = tiny(name)
    smap = stage_map(model)
    (phase,) = resolve(get_strategy("llrd"), smap.n_stages, 1)
    assert phase.layer_decay == 0.7 and phase.lr == 5e-4
    apply_freezing(model, smap, set(phase.trainable), phase.bn, phase.kinds)
    opt = engine.enter_phase(None, model, smap, phase, make_config({}), 1.0)
    stage_of = smap.stage_of()
    by_id = {id(p): n for n, p in model.named_parameters()}
    lr_of = {by_id[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert set(lr_of) == set(stage_of)
    for param, lr in lr_of.items():
        assert lr == pytest.approx(5e-4 * 0.7 ** (smap.head - stage_of[param])), param
    assert lr_of[smap.params[smap.head][0]] == pytest.approx(5e-4)
    assert lr_of[smap.params[0][0]] == pytest.approx(5e-4 * 0.7**smap.n_stages)


def test_lp_ft_keeps_head_state_and_thaws_at_a_small_lr() -> None:
    model = tiny("test_efficientnet")
    smap = stage_map(model)
    config = make_config({})
    probe, tune = resolve(get_strategy("lp-ft"), smap.n_stages, 2)
    apply_freezing(model, smap, set(probe.trainable), probe.bn)
    opt = engine.enter_phase(None, model, smap, probe, config, 1.0)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    head_w = model.get_classifier().weight
    moment = opt.state[head_w]["exp_avg"].clone()
    apply_freezing(model, smap, set(tune.trainable), tune.bn)
    assert opt is engine.enter_phase(opt, model, smap, tune, config, 1.0)
    assert torch.equal(opt.state[head_w]["exp_avg"], moment)
    assert all(g["lr"] == pytest.approx(1e-5) for g in opt.param_groups) and probe.lr == 1e-3
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert tune.bn == "eval" and not any(m.training for m in bns)


def test_parameters_join_their_stage_when_a_later_phase_thaws_the_rest() -> None:
    """`all@bias` then `all`: the biases keep their state; the other parameters join as new groups; a checkpoint's
    groups rebuild exactly (by the names they record), also for checkpoints saved before groups had names."""
    model = tiny("test_resnet")
    smap = stage_map(model)
    config = make_config({"optimizer": "adamw"})
    strategy = Strategy("bias-then-all", (Phase("all@bias", 1, 1e-3), Phase("all", 1, 1e-4)))
    first, second = resolve(strategy, smap.n_stages, 2)
    apply_freezing(model, smap, set(first.trainable), first.bn, first.kinds)
    opt = engine.enter_phase(None, model, smap, first, config, 1.0)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    bias = model.layer1[0].bn1.bias
    assert model.layer1[0].bn1.weight.grad is None and bias.grad is not None
    state = {k: v.clone() for k, v in opt.state[bias].items()}
    n_groups = len(opt.param_groups)
    apply_freezing(model, smap, set(second.trainable), second.bn, second.kinds)
    engine.enter_phase(opt, model, smap, second, config, 1.0)
    assert len(opt.param_groups) > n_groups
    assert all(torch.equal(opt.state[bias][k], v) for k, v in state.items())
    assert sorted(group_members(opt)) == sorted(id(p) for p in model.parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()

    saved = opt.state_dict()
    stages = [g["stage"] for g in opt.param_groups]
    rebuilt = engine.rebuild_optimizer(model, smap, config, stages, saved["param_groups"])
    rebuilt.load_state_dict(saved)
    assert [[id(p) for p in g["params"]] for g in rebuilt.param_groups] == [
        [id(p) for p in g["params"]] for g in opt.param_groups
    ]
    assert all(torch.equal(rebuilt.state[bias][k], v) for k, v in opt.state[bias].items())
    # the stage order alone (a checkpoint from before) cannot express a partly trained stage: it rebuilds whole
    # stages, exactly what whole-stage strategies saved then
    (full,) = resolve(get_strategy("full"), smap.n_stages, 1)
    old = engine.enter_phase(None, model, smap, full, config, 1.0)
    old_saved = old.state_dict()
    for g in old_saved["param_groups"]:
        del g["names"]
    old_stages = [g["stage"] for g in old.param_groups]
    again = engine.rebuild_optimizer(model, smap, config, old_stages, old_saved["param_groups"])
    again.load_state_dict(old_saved)
    assert group_members(again) == group_members(old)


# ---- the selector syntax -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "n", "stages", "kinds"),
    [
        ("first:1", 5, (0, 5), ()),
        ("first:3", 5, (0, 1, 2, 5), ()),
        ("first:0", 5, (5,), ()),
        ("first:9", 5, (0, 1, 2, 3, 4, 5), ()),  # clamped like last:K
        ("stages:1-3", 6, (1, 2, 3, 6), ()),
        ("stages:2", 6, (2, 6), ()),
        ("stages:0-5", 6, (0, 1, 2, 3, 4, 5, 6), ()),
        ("middle", 5, (2, 5), ()),
        ("middle", 8, (3, 4, 8), ()),
        ("all@bias", 3, (0, 1, 2, 3), ("bias",)),
        ("last:2@norm", 5, (3, 4, 5), ("norm",)),
        (" Last:2 @ Norm+Bias ", 5, (3, 4, 5), ("bias", "norm")),  # canonical order, case and spaces ignored
        ("stages:1-2@bias", 4, (1, 2, 4), ("bias",)),
        ("after:1/2@bias", 4, (2, 3, 4), ("bias",)),
        ("head@bias", 4, (4,), ()),  # the head always trains whole: no kinds left
        ("last:0@norm", 4, (4,), ()),
    ],
)
def test_selector_accepts(selector: str, n: int, stages: tuple[int, ...], kinds: tuple[str, ...]) -> None:
    assert select(selector, n) == (stages, kinds)


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        ("all@weight", "parameter kind 'weight' is not one of bias, norm"),
        ("last:2@", "parameter kind '' is not one of bias, norm"),
        ("first:-1", "first:K, stages:A-B, middle"),
        ("stages:3-1", "stages:A-B"),
        ("stages:a-b", "stages:A-B"),
        ("stages:-1", "stages:A-B"),
        ("middle:2", "@bias, @norm or @bias+norm"),
        ("first", "first:K"),
    ],
)
def test_selector_refuses_with_one_line(selector: str, fragment: str) -> None:
    for check in (lambda: select(selector, 6, "phase 1"), lambda: strategy_from_dict("x", [{"train": selector}])):
        with pytest.raises(ThawlineError) as e:
            check()
        message = str(e.value)
        assert "\n" not in message and fragment in message and f"'{selector}'" in message, message


def test_stage_range_is_checked_against_the_model(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("strategies:\n  deep:\n    reference: my notes\n    phases:\n      - {train: 'stages:1-9@bias'}\n")
    deep = load_strategies_file(str(f))["deep"]  # valid syntax: a 12-stage model has a stage 9
    assert deep.reference == "my notes"
    assert resolve(deep, 12, 1)[0].trainable == (*range(1, 10), 12)
    with pytest.raises(ThawlineError, match=r"names body stage 9, but this model's body stages are 0\.\.4"):
        resolve(deep, 5, 1)


def test_gradual_with_kinds_thaws_those_kinds_per_step() -> None:
    phases = resolve(Strategy("g", (Phase("gradual@norm", 1, 1e-3),)), 3, 4)
    assert [(p.train, p.trainable, p.kinds) for p in phases] == [
        ("last:0", (3,), ()),
        ("last:1@norm", (2, 3), ("norm",)),
        ("last:2@norm", (1, 2, 3), ("norm",)),
        ("last:3@norm", (0, 1, 2, 3), ("norm",)),
    ]


def test_resolved_phase_dict_stays_plain_and_old_ones_load() -> None:
    (bitfit,) = resolve(get_strategy("bitfit"), 4, 1)
    d = bitfit.to_dict()
    assert d["kinds"] == ["bias"] and d["trainable"] == [0, 1, 2, 3, 4]
    assert ResolvedPhase(**d) == bitfit
    (full,) = resolve(get_strategy("full"), 4, 1)
    assert "kinds" not in full.to_dict()  # config.yaml of whole-stage phases as before (resume compares it)
    assert ResolvedPhase(**full.to_dict()).kinds == ()


# ---- the registry and the CLI --------------------------------------------------------------------------------


def test_literature_strategies_are_selectable_but_not_compared_by_default(capsys: pytest.CaptureFixture) -> None:
    assert set(NEW) == set(LITERATURE) and not set(NEW) & set(STRATEGIES)
    assert tuple(DEFAULT_STRATEGIES) == tuple(STRATEGIES) and len(DEFAULT_STRATEGIES) == 7
    assert all(get_strategy(name) is LITERATURE[name] and LITERATURE[name].reference for name in NEW)
    assert LITERATURE["head2toe"].head == "multi-depth" and "Evci et al." in LITERATURE["head2toe"].reference
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert "all@bias x1 @ lr 0.001" in out and "all x1 @ lr 0.0005, decay 0.7" in out
    assert "paper: Kumar et al." in out and "ICLR 2022" in out and "paper: Ben Zaken" in out
    assert out.count("paper: Lee et al.") == 2


# ---- training: the feature cache, BN, what moves -------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("lit") / "data", {"train": 8, "val": 4, "test": 4})


def train_capturing_start(cfg, run: Path, monkeypatch: pytest.MonkeyPatch, strategy: Strategy):
    """Train in-process; return the run and the model's state before its first step."""
    start: dict[str, torch.Tensor] = {}
    real_setup = trainer.setup_run

    def setup_run(*a, **k):
        setup = real_setup(*a, **k)
        start.update({key: v.detach().clone() for key, v in setup.model.state_dict().items()})
        return setup

    monkeypatch.setattr(trainer, "setup_run", setup_run)
    result = thawline.train(cfg, run_dir=run, quiet=True, strategy=strategy)
    return result, start


def yaml_config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def moved(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in start.items() if v.is_floating_point() and not torch.equal(v, end[k])}


def assert_moved_exactly_within(params: set[str], allowed: set[str], smap, stages: set[int]) -> None:
    """Nothing outside `allowed` moved; the head and some of `allowed` in each of `stages` did (not all: behind a
    zero-initialised last BatchNorm weight that stays frozen, as timm's ResNet blocks start, a bias gets no
    gradient)."""
    assert params <= allowed, sorted(params - allowed)
    assert set(smap.params[smap.head]) <= params
    stage_of = smap.stage_of()
    assert {stage_of[k] for k in params} == stages | {smap.head}


def test_last_k_bias_trains_on_cached_features_like_the_full_model(
    small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`last:2@bias` freezes the stages below its first selected one whole, so it may train on cached outputs of
    that prefix: the same numbers as the full model; only the selected stages' biases and the head move, and BN
    statistics move exactly in the selected stages (training stages under bn frozen)."""
    strategy = Strategy("tail-bias", (Phase("last:2@bias", 1, 3e-3),))
    cfg = tiny_config(small_data, epochs=2, hflip=False)
    cached, start = train_capturing_start(cfg, tmp_path / "cached", monkeypatch, strategy)
    plain = thawline.train(
        replace(cfg, feature_cache=False), run_dir=tmp_path / "plain", quiet=True, strategy=strategy
    )
    assert all(r["feature_cache"] for r in cached.metrics) and not any(r["feature_cache"] for r in plain.metrics)
    for a, b in zip(cached.metrics, plain.metrics, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
    model = tiny("test_efficientnet")
    smap = stage_map(model)
    n = smap.n_stages
    selected = stage_params(smap, {n - 2, n - 1})
    end = load_checkpoint(tmp_path / "cached" / "last.pt")["model"]
    params = moved(start, end) & {k for k, _ in model.named_parameters()}
    assert_moved_exactly_within(params, (biases(model) & selected) | set(smap.params[smap.head]), smap, {n - 2, n - 1})
    stats = {k.rsplit(".", 1)[0] for k in moved(start, end) if "running" in k}
    bn_stage = {m: smap.stage_of()[m + ".weight"] for m in stats}
    assert stats and set(bn_stage.values()) == {n - 2, n - 1}, bn_stage


def test_surgical_first_runs_the_full_model_and_moves_only_the_stem_and_head(small_data: Path, tmp_path: Path) -> None:
    """first:1 trains stage 0 under frozen stages: no frozen prefix to cache, the whole model runs on images."""
    result = thawline.train(tiny_config(small_data, strategy="surgical-first", epochs=1), run_dir=tmp_path / "r",
                            quiet=True)  # fmt: skip
    assert not any(r["feature_cache"] for r in result.metrics)
    drift = result.summary["layer_drift"]
    assert drift["stem"] > 0 and drift["head"] > 0
    assert all(v == 0.0 for k, v in drift.items() if k not in ("stem", "head")), drift


def test_bitfit_moves_only_biases_and_head(small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(small_data, model="test_resnet", strategy="bitfit", epochs=1)
    result, start = train_capturing_start(cfg, tmp_path / "r", monkeypatch, get_strategy("bitfit"))
    assert not any(r["feature_cache"] for r in result.metrics)  # the stem trains: nothing frozen to cache
    model = tiny("test_resnet")
    smap = stage_map(model)
    end = load_checkpoint(tmp_path / "r" / "last.pt")["model"]
    params = moved(start, end) & {k for k, _ in model.named_parameters()}
    assert_moved_exactly_within(params, biases(model) | set(smap.params[smap.head]), smap, set(range(smap.n_stages)))
    bns = [k for k, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not torch.equal(start[k + ".running_mean"], end[k + ".running_mean"]) for k in bns)
    trainable = biases(model) | set(smap.params[smap.head])
    assert result.summary["trainable_params"] == [sum(p.numel() for k, p in model.named_parameters() if k in trainable)]


# ---- exact resume ----------------------------------------------------------------------------------------------


def test_sigkill_and_resume_of_bitfit_is_bit_exact(small_data: Path, tmp_path: Path) -> None:
    """`train --strategy bitfit` SIGKILLed right after epoch 1's checkpoint (THAWLINE_KILL_AFTER; mid-phase, its
    optimizer groups hold biases only), then `--resume`: metrics and weights bit-identical to the run that was
    never stopped (test_resume's check)."""
    extra = ("--min-steps", "24")  # two passes per epoch
    straight, out = tmp_path / "straight", tmp_path / "killed"
    cmd = [c if c != "layer-wise" else "bitfit" for c in command(small_data, straight, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The uninterrupted run beside the killed one (one interpreter start of wall time instead of two), each with
    # its own cache folder; the resumed run reads the killed run's.
    killed_env = {**env, "THAWLINE_CACHE_DIR": str(tmp_path / "cache-killed")}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**env, "THAWLINE_CACHE_DIR": str(tmp_path / "cache-straight")}),
        subprocess.Popen([c if c != str(straight) else str(out) for c in cmd], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env={**killed_env, "THAWLINE_KILL_AFTER": "checkpoint:1"}),
    ]  # fmt: skip
    (_, err_straight), (_, err_killed) = (p.communicate(timeout=300) for p in procs)
    assert procs[0].returncode == 0, err_straight
    assert procs[1].returncode == -9, err_killed
    saved = load_checkpoint(out / "last.pt")
    assert saved["global_epoch"] == 1
    body = [n for g in saved["optimizer"]["param_groups"] for n in g["names"] if not n.startswith("classifier.")]
    assert body and all(n.endswith(".bias") for n in body)  # what the resume has to rebuild
    resumed = subprocess.run([sys.executable, "-m", "thawline", "train", "--resume", str(out), "--quiet"],
                             capture_output=True, text=True, timeout=300, env=killed_env)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(straight, out)


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    ("strategy", "event"),
    [
        ("lp-ft", "phase:2"),  # the probe done, the thaw's groups just added
        ("lp-ft", "checkpoint:3"),  # after the thaw: the probe's groups, then the thaw's
        ("bias-then-all", "checkpoint:3"),  # a stage's biases in one group, its other parameters in later ones
    ],
)
def test_crash_and_resume_is_bit_exact(
    strategy: str, event: str, small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same resume in-process (milliseconds, not interpreter starts): the fault-injection point raises instead
    of SIGKILL, and the resumed run starts from the run folder alone."""
    plan = {"bias-then-all": Strategy("bias-then-all", (Phase("all@bias", 1, 1e-3), Phase("all", 1, 1e-4)))}
    chosen = plan.get(strategy) or get_strategy(strategy)
    cfg = tiny_config(small_data, epochs=4, min_steps=24, head_steps=48)
    thawline.train(cfg, run_dir=tmp_path / "straight", quiet=True, strategy=chosen)

    def after(name: str, n: int) -> None:
        if f"{name}:{n}" == event:
            raise Crash(event)

    monkeypatch.setattr(faults, "after", after)
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        thawline.train(cfg, run_dir=out, quiet=True, strategy=chosen)
    monkeypatch.undo()
    thawline.train(cfg, run_dir=out, resume=True, quiet=True, strategy=chosen)
    assert_same_run(tmp_path / "straight", out)
    groups = load_checkpoint(out / "last.pt")["optimizer"]["param_groups"]
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(load_checkpoint(out / "last.pt")["model"].keys() & set(names))
    assert len(names) == len(set(names)) == len(list(tiny("test_efficientnet").parameters()))


# ---- head2toe: a linear head over every depth ---------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_multi_depth_head_reads_every_stage_and_its_cached_prefix_gives_the_full_models_logits(name: str) -> None:
    model = tiny(name)
    plain_map = stage_map(model)
    last_width = model.get_classifier().in_features
    smap = install_multidepth_head(model, plain_map, 32)
    head = model.get_classifier()
    assert isinstance(head, MultiDepthHead) and smap.names == plain_map.names  # same stages, another head
    fc_ids = {id(q) for q in head.fc.parameters()}
    assert set(smap.params[smap.head]) == {n for n, p in model.named_parameters() if id(p) in fc_ids}
    assert len(head.dims) == smap.n_stages - 1 and head.in_features == last_width  # every stage but the last, + input
    assert head.fc.in_features == sum(head.dims) + last_width
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    split = split_at(model, smap, smap.head)
    assert split is not None
    with torch.no_grad():
        logits = model(x)
        cached = split.prefix(x)  # what the feature cache stores: the gathered multi-depth vector
        assert cached.shape == (4, head.fc.in_features)
        assert torch.allclose(split.suffix(cached), logits, atol=1e-6)
        # each depth enters standardised: a stage's slice has mean ~0 and variance ~1 per image
        first = cached[:, : head.dims[0]]
        assert torch.allclose(first.mean(1), torch.zeros(4), atol=1e-4)


def test_head2toe_trains_only_its_head_on_cached_features_and_predicts_from_the_run_folder(
    small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thawline.deploy.load import load_run

    cfg = tiny_config(small_data, strategy="head2toe", epochs=2)
    # head-only first, on the same cache: its cached prefix outputs (the pooled last features) are not head2toe's
    thawline.train(replace(cfg, strategy="head-only"), run_dir=tmp_path / "head-only", quiet=True)
    result, start = train_capturing_start(cfg, tmp_path / "run", monkeypatch, get_strategy("head2toe"))
    assert all(r["feature_cache"] for r in result.metrics)
    end = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert moved(start, end) == {"classifier.fc.weight", "classifier.fc.bias"}  # the body, BN statistics too, stay
    saved = yaml_config(tmp_path / "run")
    assert saved["strategy_head"] == "multi-depth"
    model, cfg_back = load_run(tmp_path / "run", "best")  # rebuilt with the same head from the run folder alone
    assert isinstance(model.get_classifier(), MultiDepthHead) and cfg_back["strategy_head"] == "multi-depth"
    assert main(["evaluate", str(tmp_path / "run")]) == 0  # the best checkpoint on test, as the run measured it
    evaluation = json.loads((tmp_path / "run" / "evaluation_test.json").read_text())
    assert evaluation["accuracy"] == pytest.approx(result.summary["test_acc"], abs=1e-6)
    assert evaluation["loss"] == pytest.approx(result.summary["test_loss"], abs=1e-4)
    assert main(["export", str(tmp_path / "run")]) == 0  # ONNX, checked against PyTorch by onnxruntime
    assert (tmp_path / "run" / "model.onnx").is_file()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", NEW)
def test_every_new_strategy_paused_and_resumed_is_bit_exact(
    name: str, strategy: str, small_data: Path, tmp_path: Path
) -> None:
    """Paused after epoch 1 (after the first phase of lp-ft's 2 + 2 epochs: its phase boundary), then resumed: the
    same metrics and bit-identical weights as the uninterrupted run, on both tiny models."""
    cfg = tiny_config(small_data, strategy=strategy, model=name, epochs=4)
    thawline.train(cfg, run_dir=tmp_path / "straight", quiet=True)
    stop = 2 if strategy == "lp-ft" else 1
    paused = thawline.train(cfg, run_dir=tmp_path / "paused", quiet=True, stop_after_epoch=stop)
    assert paused.summary is None
    thawline.train(cfg, run_dir=tmp_path / "paused", resume=True, quiet=True)
    assert_same_run(tmp_path / "straight", tmp_path / "paused")
