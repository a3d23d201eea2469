"""The solved head (headfit.py): a converged L2-regularised logistic regression, C by stratified CV, offered as a
candidate where the head trains alone to the end of the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_image_folder, tiny_config

import thawline
from thawline.core.config import replace
from thawline.models import headfit
from thawline.training.engine import EvalResult


def blobs(n_per_class: int, dim: int, classes: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g) + 5.0  # an offset: the bias must absorb it
    return x * torch.linspace(0.1, 10, dim), y  # features of very different scales (standardisation matters)


def test_the_solution_is_the_optimum_of_the_regularised_loss_in_raw_feature_space() -> None:
    x, y = blobs(20, 8, 3, spread=4.0)
    head = torch.nn.Linear(8, 3)
    fit = headfit.fit_head(head, x, y, 3, c=0.1)
    # KKT: the gradient of mean CE + ||W_std||^2 / (2 C N) at the solution is ~0, in the standardised space
    mean, std = x.mean(0), x.std(0, unbiased=False)
    w_std = (head.weight.detach() * std).requires_grad_()
    b_std = (head.bias.detach() + head.weight.detach() @ mean).requires_grad_()
    loss = F.cross_entropy(((x - mean) / std) @ w_std.T + b_std, y) + 0.5 / (0.1 * len(x)) * (w_std**2).sum()
    loss.backward()
    assert w_std.grad.abs().max() < 1e-4 and b_std.grad.abs().max() < 1e-4
    assert fit.iterations > 0 and fit.c == 0.1
    # started from the solution, a second solve returns at once with the same head
    before = head.weight.detach().clone()
    again = headfit.fit_head(head, x, y, 3, c=0.1, warm_start=True)
    assert again.iterations <= 3 and torch.allclose(head.weight, before, rtol=1e-3, atol=1e-4)


def test_ties_in_cv_go_to_the_strongest_l2_and_the_temperature_keeps_the_head_confident() -> None:
    x, y = blobs(15, 6, 4, spread=0.3)
    head = torch.nn.Linear(6, 4)
    fit = headfit.fit_head(head, x, y, 4)
    # the result does not depend on the head's weights before (a strongly regularised fit from a random start
    # stopped short in float32 and misclassified half the train set)
    other = torch.nn.Linear(6, 4)
    torch.nn.init.normal_(other.weight, std=1.0)
    headfit.fit_head(other, x, y, 4)
    assert torch.allclose(other.weight, head.weight, rtol=1e-3, atol=1e-6 / fit.temperature)
    assert fit.folds == 5 and set(fit.cv_acc) == set(headfit.C_GRID)
    assert fit.cv_acc[fit.c] == max(fit.cv_acc.values()) == 1.0
    # ties go to the strongest L2 that reaches the best held-out accuracy (as scikit-learn picks) ...
    assert fit.c == min(c for c, a in fit.cv_acc.items() if a == 1.0)
    # ... whose logits alone are near-uniform; the fitted temperature (< 1) makes the head confident again
    probs = head(x).softmax(1).detach()
    assert fit.temperature < 0.1 and probs.max(1).values.median() > 0.9
    assert (probs.argmax(1) == y).float().mean() >= 0.95


def test_one_standard_error_rule_takes_the_strongest_l2_within_one_error_of_the_best() -> None:
    spread = [-0.04, 0.04, 0.0, -0.02, 0.02]  # sample std 0.0316, standard error over 5 folds 0.0141
    means = {1e-5: 0.60, 1e-4: 0.70, 1e-3: 0.73, 1e-2: 0.74, 1e-1: 0.75, 1.0: 0.745, 10.0: 0.74}
    accs = {c: [m + d for d in spread] for c, m in means.items()}
    c, c_best, se = headfit.one_standard_error(accs)
    assert c_best == 0.1 and se == pytest.approx(0.0316228 / 5**0.5, abs=1e-6)
    assert c == 1e-2  # 0.74 >= 0.75 - 0.0141 > 0.73: the strongest L2 within one error
    flat = {c: [m] * 5 for c, m in means.items()}  # no spread over the folds: the best mean itself
    assert headfit.one_standard_error(flat) == (0.1, 0.1, 0.0)


def test_the_temperature_calibrates_without_moving_the_argmax() -> None:
    g = torch.Generator().manual_seed(2)
    y = torch.arange(3).repeat(100)
    logits = 0.01 * (torch.randn(300, 3, generator=g) + 2.0 * F.one_hot(y, 3))  # right 4 in 5 times, but timid
    t = headfit.fit_temperature(logits, y)
    assert t < 0.05 and F.cross_entropy(logits / t, y) < F.cross_entropy(logits, y) - 0.2
    assert torch.equal((logits / t).argmax(1), logits.argmax(1))
    assert headfit.fit_temperature(100 * logits, y) == pytest.approx(100 * t, rel=1e-3)


def test_noise_labels_make_cv_choose_strong_regularisation() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 40, generator=g), torch.arange(2).repeat(30)  # labels unrelated to 40 features
    fit = headfit.fit_head(torch.nn.Linear(40, 2), x, y, 2)
    assert fit.c <= 1e-3, fit.cv_acc  # a weak L2 memorises the noise; the held-out folds are at chance
    assert max(fit.cv_acc.values()) < 0.75


def test_folds_are_stratified_and_reproducible() -> None:
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    folds = headfit.cv_folds(labels, seed=0)
    assert folds.max() + 1 == 3  # never more folds than the smallest class has images
    for c in range(3):
        counts = np.bincount(folds[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1  # each class spread evenly over the folds
    assert (headfit.cv_folds(labels, seed=0) == folds).all()
    assert (headfit.cv_folds(np.array([0, 0, 1]), seed=0) == -1).all()  # a one-image class: no CV


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_head_only_keeps_the_solved_head_when_it_validates_at_least_as_well(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 20, "val": 10}, classes=("circle", "stripes"))
    cfg = tiny_config(data, strategy="head-only", epochs=3)
    run = thawline.train(cfg, run_dir=tmp_path / "full", quiet=True)
    rows = read_rows(tmp_path / "full")
    # the stepped epochs run as without the solver; the last one also solves the head and keeps the better
    plain = thawline.train(replace(cfg, head_solver=False), run_dir=tmp_path / "plain", quiet=True)
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in plain.metrics]
    assert ["head_fit" in r for r in rows] == [False, False, True]
    fit = rows[-1]["head_fit"]
    assert fit["solver"] == "lbfgs" and fit["C"] in headfit.C_GRID and fit["cv_folds"] == 5
    assert fit["val_acc"] == 1.0 and fit["kept"]  # separable: the solved head ties or beats the stepped one
    assert rows[-1]["val_acc"] == 1.0 and run.summary["best_val_acc"] == 1.0 and run.summary["best_epoch"] == 3
    # best.pt holds the solved head: the solver on the same features returns it at once
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)["model"]
    stepped = torch.load(tmp_path / "plain" / "best.pt", weights_only=True)["model"]
    assert not torch.equal(best["classifier.weight"], stepped["classifier.weight"])
    assert all(torch.equal(best[k], stepped[k]) for k in best if not k.startswith("classifier."))  # body frozen
    # resume: paused after epoch 2, resumed, the same weights as the uninterrupted run
    thawline.train(cfg, run_dir=tmp_path / "paused", quiet=True, stop_after_epoch=2)
    resumed = thawline.train(cfg, run_dir=tmp_path / "paused", resume=True, quiet=True)
    again = torch.load(tmp_path / "paused" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], again[k]) for k in best)
    assert resumed.summary["test_acc"] == run.summary["test_acc"]


def test_the_stepped_head_stays_when_the_solved_one_validates_worse(tmp_path: Path) -> None:
    # The candidate step alone: a solved head that cannot beat the best epoch so far leaves the stepped weights.
    from types import SimpleNamespace

    from thawline.training.run_state import LoopState
    from thawline.training.solved_head import solved_candidate

    x, y = blobs(10, 6, 2, spread=0.5)
    head = torch.nn.Linear(6, 2)
    before = (head.weight.detach().clone(), head.bias.detach().clone())
    config = SimpleNamespace(seed=0)
    setup = SimpleNamespace(class_weights=None, data=SimpleNamespace(classes=["a", "b"]), config=config,
                            device=torch.device("cpu"), amp=False, model=head)  # fmt: skip
    source = SimpleNamespace(train_features=lambda: (x, y), eval_forward=head, val_batches=lambda: [(x, y)],
                             setup_seconds=0.0)  # fmt: skip
    run = SimpleNamespace(setup=setup, across=False)
    stepped = EvalResult(0.7, 0.5, torch.zeros(0), torch.zeros(0))
    row, val = solved_candidate(run, LoopState(best_acc=1.01), source, head, stepped)  # unbeatable best epoch
    assert row["val_acc"] == 1.0 and not row["kept"] and val is stepped
    assert torch.equal(head.weight, before[0]) and torch.equal(head.bias, before[1])
    row, val = solved_candidate(run, LoopState(best_acc=0.5), source, head, stepped)
    assert row["kept"] and val.acc == 1.0 and not torch.equal(head.weight, before[0])
    assert source.setup_seconds > 0  # the solve's time counts as the epoch's


def test_a_head_phase_before_a_thaw_is_stepped_and_the_seed_preset_never_solves(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"train": 16, "val": 8})
    thawline.train(tiny_config(data, strategy="two-phase"), run_dir=tmp_path / "two", quiet=True)
    rows = read_rows(tmp_path / "two")
    assert [("head_fit" in r, r["feature_cache"]) for r in rows] == [(False, True), (False, False)]
    seed = thawline.make_config(data=str(data), preset="seed")
    assert seed.head_solver is False
    stepped = tiny_config(data, strategy="head-only", head_solver=False)
    thawline.train(stepped, run_dir=tmp_path / "stepped", quiet=True)
    assert all("head_fit" not in r and r["passes"] == 1 for r in read_rows(tmp_path / "stepped"))


def test_without_the_feature_cache_the_same_head_is_solved(tmp_path: Path) -> None:
    # The recipe never depends on whether the cache is used: the classifier inputs then come from one frozen pass.
    data = make_image_folder(tmp_path / "data", {"train": 20, "val": 10}, classes=("circle", "stripes"))
    cfg = tiny_config(data, strategy="head-only", epochs=2, hflip=False)
    cached = thawline.train(cfg, run_dir=tmp_path / "cached", quiet=True)
    plain = thawline.train(replace(cfg, feature_cache=False), run_dir=tmp_path / "plain", quiet=True)
    assert cached.metrics[-1]["feature_cache"] and not plain.metrics[-1]["feature_cache"]
    fit_c, fit_p = cached.metrics[-1]["head_fit"], plain.metrics[-1]["head_fit"]
    assert fit_p["C"] == fit_c["C"] and fit_p["cv_acc"] == fit_c["cv_acc"] and fit_p["kept"] == fit_c["kept"]
    assert fit_p["val_acc"] == fit_c["val_acc"]
