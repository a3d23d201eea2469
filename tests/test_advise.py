"""thawline advise: LogME against the paper's formulas, the probes, the ranking rules, and the command end to end."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, tiny_config

from thawline.comparing import logme as lm
from thawline.comparing.features import sample_indices
from thawline.comparing.probes import knn_accuracy, linear_probe
from thawline.models.stages import stage_outputs
from thawline.report.advice import ADVICE_HTML, ADVICE_JSON, FIGURE, advice_html, format_advice
from thawline.report.advice_rules import (
    FAR_BEHIND,
    PRIOR,
    RULE_WEIGHT,
    STRATEGY_ORDER,
    Signals,
    far_behind,
    rank_strategies,
    signals_from_doc,
)


def direct_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> tuple[float, float, float, float]:
    """The paper's evidence with the D x D matrix A = alpha I + beta F^T F, and the fixed-point quantities
    (gamma, ||m||^2, ||F m - y||^2), without any SVD."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    m2, res2 = float(m @ m), float(np.sum((f @ m - y) ** 2))
    gamma = d - alpha * float(np.trace(np.linalg.inv(a)))  # sum_i beta s_i / (alpha + beta s_i)
    ev = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - np.linalg.slogdet(a)[1] / 2
    )
    return float(ev), gamma, m2, res2


@pytest.mark.parametrize("n,d", [(60, 12), (15, 40)])  # more images than dims, and fewer (zero eigenvalues)
def test_logme_svd_path_matches_the_direct_formula(n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = (f @ rng.normal(size=d) > 0.5).astype(np.float64)  # labels the features predict
    sp = lm.spectrum(f)
    for alpha, beta in [(0.3, 2.0), (5.0, 0.7), (1.0, 1.0)]:
        assert lm.evidence(sp, y, alpha, beta) == pytest.approx(direct_evidence(f, y, alpha, beta)[0], rel=1e-9)
    # The fixed point: alpha = gamma / ||m||^2 and beta = (N - gamma) / ||Fm - y||^2 by the direct formulas too,
    # and, where the problem is well posed (N > D, labels the features predict, so the updates' EPS from the
    # authors' code is negligible against ||m||^2), a maximum of the evidence.
    score, alpha, beta = lm.maximize(sp, y, tol=1e-10, max_iter=1000)
    ev, gamma, m2, res2 = direct_evidence(f, y, alpha, beta)
    assert score == pytest.approx(ev / n, rel=1e-9)
    assert alpha == pytest.approx(gamma / (m2 + lm.EPS), rel=1e-5)
    assert beta == pytest.approx((n - gamma) / (res2 + lm.EPS), rel=1e-5)
    for da, db in [(1.2, 1.0), (0.8, 1.0), (1.0, 1.2), (1.0, 0.8)] if n > d else []:
        assert direct_evidence(f, y, alpha * da, beta * db)[0] / n < score
    # LogME is the mean over classes of these per-class maxima.
    labels = rng.integers(0, 3, n)
    per_class = [lm.maximize(sp, (labels == c).astype(float))[0] for c in range(3)]
    assert lm.logme(f, labels) == pytest.approx(np.mean(per_class), rel=1e-9)


def test_logme_ranks_better_separated_features_higher() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 16))
    noise = rng.normal(size=(200, 16))
    scores = [lm.logme(sep * centres[labels] + noise, labels) for sep in (0.0, 0.5, 1.0, 3.0)]
    assert scores == sorted(scores) and scores[-1] - scores[0] > 0.1


def _blobs(n_per: int, k: int, d: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), n_per)
    centres = np.random.default_rng(99).normal(size=(k, d)) * sep
    return centres[labels] + rng.normal(size=(len(labels), d)), labels


def test_probes_on_a_separable_toy_set() -> None:
    xtr, ytr = _blobs(40, 3, 8, sep=6.0, seed=0)
    xva, yva = _blobs(20, 3, 8, sep=6.0, seed=1)
    fit = linear_probe(xtr, ytr, xva, yva, 3)
    assert fit.acc == 1.0 and fit.loo_acc == 1.0
    assert knn_accuracy(xtr, ytr, xva, yva) == 1.0
    # The fitted head is a classifier on raw features (temperature-scaled logits): it predicts val right.
    assert ((xva @ fit.weight + fit.bias).argmax(1) == yva).all()
    # Labels that do not depend on the features: both probes near chance.
    shuffled = np.random.default_rng(2).permutation(ytr)
    assert linear_probe(xtr, shuffled, xva, yva, 3).acc < 0.7
    assert knn_accuracy(xtr, shuffled, xva, yva) < 0.7


def test_ridge_leave_one_out_is_exact() -> None:
    """The closed-form LOO accuracy that picks the ridge strength equals refitting without each image."""
    xtr, ytr = _blobs(6, 3, 4, sep=1.0, seed=3)
    fit = linear_probe(xtr, ytr, xtr, ytr, 3)
    right = 0
    for i in range(len(xtr)):
        keep = np.arange(len(xtr)) != i
        x, y = xtr[keep], ytr[keep]
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6  # the probe standardises with the full train statistics
        xs, onehot = (x - mu) / sd, np.eye(3)[y]
        xs1 = np.c_[xs, np.ones(len(xs))]
        reg = np.diag([fit.ridge * len(xtr)] * xs.shape[1] + [0.0])  # the intercept is not penalised
        w = np.linalg.solve(xs1.T @ xs1 + reg, xs1.T @ onehot)
        right += int((np.r_[(xtr[i] - mu) / sd, 1.0] @ w).argmax() == ytr[i])
    assert fit.loo_acc == pytest.approx(right / len(xtr))


def test_sample_is_stratified_sorted_and_whole_when_small() -> None:
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    pick = sample_indices(labels, 100, seed=0)
    assert len(pick) == 100 and (np.diff(pick) > 0).all()
    counts = np.bincount(labels[pick], minlength=3)
    assert counts[0] == pytest.approx(90, abs=1) and counts[1] == pytest.approx(9, abs=1) and counts[2] >= 1
    assert (sample_indices(labels, 5000, seed=0) == np.arange(1000)).all()
    assert (sample_indices(labels, 100, seed=0) == pick).all()


def _signals(**over) -> Signals:
    base = dict(
        stages=["stem", "s1", "s2", "s3", "s4", "s5"],
        dims=[8, 16, 32, 64, 128, 256],
        linear=[0.5, 0.6, 0.7, 0.8, 0.85, 0.86],
        knn=[0.4, 0.5, 0.6, 0.7, 0.8, 0.82],
        logme=[-0.3, -0.2, -0.1, 0.0, 0.1, 0.2],
        rgn=[0.02] * 6,
        head_rgn=0.5,
        n_classes=10,
        chance=0.1,
        images_per_class=200,
        num_train=2000,
        num_val=1000,
    )
    return Signals(**{**base, **over})


def test_ranking_rules() -> None:
    ranking, rec, reasons = rank_strategies(_signals())
    assert sorted(r["strategy"] for r in ranking) == sorted(STRATEGY_ORDER)
    assert [r["rank"] for r in ranking] == list(range(1, 8))
    assert rec["strategy"] == ranking[0]["strategy"] and rec["partial"].startswith("partial-")
    assert any("too few to train from scratch" in r for r in reasons) and ranking[-1]["strategy"] == "scratch"
    # No rule moves a strategy by more than the prior's gaps at the shipped weight unless rules agree: the
    # suite's order stands (gradual first), and each move is recorded at its weighted size
    assert [r["strategy"] for r in ranking][:2] == ["gradual", "layer-wise"]
    scratch = next(r for r in ranking if r["strategy"] == "scratch")
    assert scratch["score"] == pytest.approx(PRIOR["scratch"] - RULE_WEIGHT * 0.1)
    assert scratch["reasons"][0].startswith(f"{-RULE_WEIGHT * 0.1:+.2f}: ")

    # A near-perfect top probe on few images per class moves head-only up; at the rules' full size it wins.
    perfect = _signals(linear=[0.6, 0.7, 0.8, 0.9, 0.95, 0.98], images_per_class=20)
    ranking, rec, reasons = rank_strategies(perfect)
    head = next(r for r in ranking if r["strategy"] == "head-only")
    assert head["score"] > PRIOR["head-only"] and any("already reaches 98.0%" in r for r in head["reasons"])
    assert rank_strategies(perfect, rule_weight=1.0)[0][0]["strategy"] == "head-only"
    assert rec["freeze_stages"] >= 4  # few images: at least 2/3 of 6 stages frozen

    # Earlier stages beat the top by far: head-only drops, partial rises and freezes up to the best stage.
    gap = rank_strategies(_signals(linear=[0.5, 0.7, 0.85, 0.84, 0.75, 0.72]))
    order = [r["strategy"] for r in gap[0]]
    assert order.index("head-only") > 3 and order.index("partial") < order.index("head-only")
    scores = {r["strategy"]: r["score"] for r in gap[0]}
    assert scores["head-only"] < PRIOR["head-only"] and scores["partial"] > PRIOR["partial"]
    assert gap[1]["freeze_stages"] == 3 and gap[1]["partial"] == "partial-1/2"
    assert any("too specific to the pretraining task" in r for r in gap[2])
    assert gap[1]["lr"]["body"] == pytest.approx(3e-4)  # the features have to move

    # The same gap measured on 40 val images is noise: reported, and it moves nothing.
    noisy = rank_strategies(_signals(linear=[0.5, 0.6, 0.7, 0.8, 0.86, 0.84], num_val=40))
    assert any("within the noise" in r for r in noisy[2])
    assert not any("too specific to the pretraining task" in r for r in noisy[2])

    # Gradient pressure in the early stages moves full up and records why.
    early = rank_strategies(_signals(rgn=[0.2, 0.2, 0.2, 0.02, 0.02, 0.02]))
    full = next(r for r in early[0] if r["strategy"] == "full")
    assert any("lower half" in r for r in full["reasons"])
    assert early[1]["layer_decay"] == 1.0  # RGN falls with depth: no decay
    late = rank_strategies(_signals(rgn=[0.01, 0.01, 0.02, 0.04, 0.08, 0.16]))
    assert 0.5 <= late[1]["layer_decay"] < 1.0


def test_far_behind_skips_only_what_no_evidence_lifts() -> None:
    """compare --advise leaves out a strategy scored more than FAR_BEHIND below the best one compared: scratch on
    ordinary data, not when the pretrained features barely help; never below two strategies."""
    usual = [r["strategy"] for r in rank_strategies(_signals())[0]]  # few images per class: scratch down
    ranking = rank_strategies(_signals())[0]
    skipped = far_behind(ranking, usual)
    assert list(skipped) == ["scratch"] and "below gradual" in skipped["scratch"]
    # the gap is to the best of the strategies compared, not the advisor's overall top pick
    assert far_behind(ranking, ["two-phase", "scratch", "head-only"]) == {}
    assert far_behind(ranking, ["gradual", "scratch"]) == {}  # a comparison of two stays two
    assert list(far_behind(ranking, ["gradual", "scratch", "my-recipe"])) == ["scratch"]
    assert far_behind(ranking, ["my-recipe", "another"]) == {}  # names the advisor did not score stay
    variant = next(r["variant"] for r in ranking if r["strategy"] == "partial")
    assert far_behind(ranking, [variant, "scratch", "full"]) == {}  # partial-k/n is scored as partial (0.52)
    # features that barely help (every depth within 15 points of chance) lift scratch within reach: kept
    useless = rank_strategies(_signals(linear=[0.12, 0.14, 0.15, 0.16, 0.17, 0.18]))[0]
    assert far_behind(useless, usual) == {}
    scores = {r["strategy"]: r["score"] for r in useless}
    assert max(scores.values()) - scores["scratch"] <= FAR_BEHIND


def test_stage_outputs_pool_to_the_classifier_input() -> None:
    from thawline.models.stages import stage_map
    from thawline.models.weights import build_model_with_info

    model = build_model_with_info("test_resnet", "none", 3)[0].eval()
    smap = stage_map(model)
    x = torch.randn(2, 3, 32, 32)
    names = stage_outputs(model, smap, x)
    assert names is not None and len(names) == smap.n_stages and names[1:4] == ["layer1", "layer2", "layer3"]
    outs = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: outs.update({n: o})) for n in names]
    with torch.no_grad():
        model(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    for h in hooks:
        h.remove()
    assert torch.allclose(outs[names[-1]].flatten(1), pre)


def test_advise_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from thawline.cli import main

    data = make_image_folder(tmp_path / "data", {"train": 12, "val": 6})
    out = tmp_path / "advice"
    argv = ["advise", "--data", str(data), "--model", "test_efficientnet", "--weights", "none", "--img-size", "32"]
    argv += ["--batch-size", "8", "--workers", "1", "--out", str(out), "--max-train", "30"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "predicted ranking" in text and "advise took" in text and "why:" in text
    doc = json.loads((out / ADVICE_JSON).read_text())
    assert sorted(r["strategy"] for r in doc["ranking"]) == sorted(STRATEGY_ORDER)
    assert doc["sampled"] == {"train": 30, "val": 18} and doc["num_train"] == 36
    assert len(doc["signals"]["depths"]) == 6 and all(0 <= d["linear_acc"] <= 1 for d in doc["signals"]["depths"])
    rec = doc["recommendation"]
    assert rec["strategy"] == doc["ranking"][0]["strategy"] and rec["partial"].startswith("partial-")
    assert rec["command"]["compare"].startswith("thawline compare") and doc["reasons"]
    for command in rec["command"].values():  # the options given to advise, so the suggestion runs on the same setup
        assert f"--data {data} --model test_efficientnet --weights none --img-size 32 --batch-size 8" in command
        assert "--workers" not in command and "--out" not in command
    assert (out / FIGURE).stat().st_size > 0
    # advise.json holds what the ranking was computed from: the same signals rank the same way again,
    # and another prior (benchmarks/advise_suite.py's leave-one-task-out one) is the only thing that changes it
    again, _, _ = rank_strategies(signals_from_doc(doc))
    assert [r["strategy"] for r in again] == [r["strategy"] for r in doc["ranking"]]
    reverse = [r["strategy"] for r in doc["ranking"]][::-1]
    dominant = {name: 10.0 * (len(reverse) - i) for i, name in enumerate(reverse)}  # far above any rule's change
    rows, _, _ = rank_strategies(signals_from_doc(doc), dominant)
    assert [r["strategy"] for r in rows] == reverse and rows[0]["prior"] == 70.0
    # the console names what `compare --advise` would skip, and only then
    assert ("far behind" in text) == bool(far_behind(doc["ranking"], list(STRATEGY_ORDER)))
    scratch_far = [{**r, "score": 0.0} if r["strategy"] == "scratch" else r for r in doc["ranking"]]
    assert "far behind (compare --advise skips): scratch\n" in format_advice({**doc, "ranking": scratch_far})
    page = (out / ADVICE_HTML).read_text()
    assert f'src="{FIGURE}"' in page and "Probe accuracy vs depth" in page and "<b>Why.</b>" in page
    assert html.escape(doc["reasons"][0]) in page
    assert not list(out.glob(".*.tmp"))  # written by temp file and rename
    # The fragment a report embeds: one section, the figure where the report puts it.
    fragment = advice_html(doc, "report_files/advise_probes.png")
    assert fragment.startswith('<section id="advice">') and 'src="report_files/advise_probes.png"' in fragment


def test_advise_api_reads_its_features_back(image_folder: Path, tmp_path: Path, isolated_cache: Path) -> None:
    import thawline

    config = tiny_config(image_folder, model="test_resnet")
    first = thawline.advise(config, tmp_path / "a", grad_batches=1, quiet=True)
    second = thawline.advise(config, tmp_path / "b", grad_batches=1, quiet=True)
    assert first.ranking == second.ranking and len(first.ranking) == 7
    assert first.doc["signals"]["depths"] == second.doc["signals"]["depths"]  # the cached features, exactly
    assert len(list((isolated_cache / "features").glob("advise_*.f32"))) == 2  # one per split, written once
    # Given the data compare prepared (the whole folder fits the sample): the same images, the same advice.
    from thawline.training.prepare import prepare_data

    third = thawline.advise(config, tmp_path / "c", grad_batches=1, quiet=True, data=prepare_data(config, True))
    assert third.doc["signals"]["depths"] == first.doc["signals"]["depths"]
    assert [d["module"] for d in first.doc["signals"]["depths"]][1:4] == ["layer1", "layer2", "layer3"]


def test_advise_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from thawline.cli import main

    argv = ["advise", "--data", str(tmp_path / "nope"), "--model", "test_resnet", "--weights", "none"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("thawline: error:") and "nope" in err[0]
    assert not (tmp_path / "o").exists()  # nothing written for data that is not there
