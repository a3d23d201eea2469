"""Predict which fine-tuning strategy will win, in seconds and without training: `thawline advise`.

One pass of the frozen pretrained backbone (eval mode, no grad) over a stratified sample of train and val (by
default up to 2,000 and 1,000 images, decoded by the same decode-once cache and normalised as training does)
collects the globally average-pooled output of every stage of the model's stage map. On each depth:

- a linear probe: multinomial logistic regression on standardised features (L2 strength picked on a 20% hold-out
  of the train sample, refitted on all of it), val accuracy;
- k-NN: cosine similarity on train-mean-centred features, k = 10 majority vote, val accuracy;
- LogME (You et al., ICML 2021; `thawline.comparing.logme`) on the train sample.

Then a few batches of training loss through the whole model, its head set to the linear probe fitted on the
classifier's input, give the relative gradient norm ||g|| / ||w|| of each stage (Auto-RGN, Lee et al., ICLR 2023).

The ranking of the seven default strategies is a score per strategy: a prior (the order that fits the 13-task
suite's measured test accuracies best: gradual, layer-wise, head-only, full, partial, two-phase, scratch), plus
these rules at a quarter of the sizes in the code (RULE_WEIGHT: on the suite they only earned their place as
tie-breakers), each recorded as a reason beside the strategies it moved:

1. Top probe (linear-probe val accuracy on the last stage's features). >= 95%: a new head alone gets almost
   everything at the lowest cost (head-only up, full and scratch down). < 75%: the backbone must adapt (head-only
   down; full, layer-wise, two-phase up). Within 15 points of the majority class at every depth: the pretrained
   features barely help (scratch and full up, head-only down).
2. Gap: an earlier stage's probe beats the top by more than the noise (2 points, or two standard errors of the
   top probe's val accuracy when that is larger): the top stages are too specific to the pretraining task; thaw
   them (head-only down by 5 points plus the gap, partial up most, full and layer-wise up). The probe still rising
   at the top by more than the noise: the top features fit (head-only up). A gap within the noise is reported,
   and moves nothing.
3. Data size (median train images per class in the whole folder). < 30: training every layer overfits (full and
   scratch down, head-only up). < 1000: scratch down. >= 1000: full fine-tuning can use the data (full, two-phase,
   scratch up, head-only down).
4. LogME peaking below the top stage backs rule 2 (partial up, head-only down); highest at the top backs head-only.
5. Gradient pressure: >= 70% of the body's relative gradient norm (stage shares summed) in its lower half means
   the loss asks for changes early in the network (an input-level shift in Lee et al.'s terms): full and two-phase
   up, head-only and partial down. >= 50% in the top quarter: the change belongs at the top (partial, layer-wise
   up). A flat profile puts 50% in the lower half; lite0's early stages have small weights, and it put 63-65% there
   on Fashion-MNIST and on synthetic shapes alike, so the threshold sits above that.

Ties go to the cheaper strategy. The recommended `partial` freezes every stage up to and including the deepest one
whose probe is within half a point of the best (at least one stage trains; with < 30 images per class at least 2/3
of the stages stay frozen). LRs: the body LR is 1e-4, 3e-5 when the top probe is >= 90% (the features already fit),
3e-4 when it is < 60% or the gap is >= 5 points; partial trains at 3x the body LR, a head at 1e-3; `layer_decay`
is the per-stage ratio of a log-linear fit to the gradient profile (Auto-RGN's LR-proportional-to-RGN, as the
strategies' geometric decay), clipped to [0.5, 1].

`compare --advise` leaves out, before any training, the strategies scored more than FAR_BEHIND below the best one
compared (`far_behind`): in practice scratch, unless a rule lifted it.

`advise(config)` returns an `Advice` and writes advise.json, advise_probes.png and advise.html into the out folder.
This module runs the steps; the sample, the backbone pass and the gradient profile are in `comparing.features`, the
probes in `comparing.probes` and `comparing.logme`, the prior and rules (signals -> ranking) in
`report.advice_rules`, and advise.json's format, text and HTML (`advice_html`, the report's section) in
`report.advice`, which need no torch.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from thawline.comparing.features import collect_features, gradient_profile, sample_data, sample_prepared
from thawline.comparing.logme import logme
from thawline.comparing.probes import KNN_K, ProbeFit, knn_accuracy, linear_probe
from thawline.core.atomic import write_text_atomic
from thawline.core.config import PLACE_OPTIONS, TrainConfig, option_flags
from thawline.core.errors import ThawlineError
from thawline.models.stages import stage_outputs
from thawline.report.advice import ADVICE_HTML, ADVICE_JSON, FIGURE, FORMAT, Advice, advice_page, format_advice
from thawline.report.advice_rules import Signals, rank_strategies
from thawline.report.plots import plot_probe_depth
from thawline.training.prepare import PreparedData, RunSetup, setup_run
from thawline.training.runfolder import RUNS_PARENT, make_writable_folder, next_run_dir
from thawline.training.strategies import get_strategy

MAX_TRAIN = 2000
MAX_VAL = 1000
GRAD_BATCHES = 4


# ---- the command --------------------------------------------------------------------------------------------


def advise(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    max_train: int = MAX_TRAIN,
    max_val: int = MAX_VAL,
    grad_batches: int = GRAD_BATCHES,
    quiet: bool = False,
    data: PreparedData | None = None,
) -> Advice:
    """Probe the frozen backbone on a sample of `config.data` and predict the strategies' ranking (module
    docstring); writes advise.json, advise_probes.png and advise.html into `out` (default: config.out, else
    runs/advise-N). `data`: what `prepare_data(config)` returned, when the caller has it (compare), so no image
    is discovered or decoded again. Prints the signals, ranking and reasons unless `quiet`."""
    if max_train < 2 or max_val < 1:
        raise ThawlineError("advise needs at least 2 train and 1 val images in its sample")
    t0 = time.perf_counter()
    sampled = sample_prepared(data, max_train, max_val, config.seed) if data is not None else None  # from compare
    data, totals, per_class = sampled or sample_data(config, max_train, max_val, quiet)
    out_dir = Path(out or config.out or next_run_dir(RUNS_PARENT, "advise"))
    make_writable_folder(out_dir)
    t_data = time.perf_counter()
    setup = setup_run(config, get_strategy("head-only"), data)  # pretrained weights, training's normalisation
    train, val = data.splits["train"], data.splits["val"]
    names = _stage_names(setup, config)
    feats_tr, pre_tr = collect_features(setup, train, names, quiet)
    feats_va, pre_va = collect_features(setup, val, names, quiet)
    t_feat = time.perf_counter()
    ytr, yva, n_classes = train.labels, val.labels, len(data.classes)
    fits, knn, lm = _depth_probes(feats_tr, ytr, feats_va, yva, n_classes)
    head = _head_probe(setup, fits[-1], feats_tr[-1], pre_tr, ytr, pre_va, yva, n_classes)
    t_probe = time.perf_counter()
    rgn = gradient_profile(setup, train, head, grad_batches) if grad_batches > 0 else []
    t_grad = time.perf_counter()
    sig = Signals(
        stages=list(setup.smap.names[:-1]),
        dims=[a.shape[1] for a in feats_tr],
        linear=[f.acc for f in fits],
        knn=knn,
        logme=lm,
        rgn=rgn[:-1],
        head_rgn=rgn[-1] if rgn else None,
        n_classes=n_classes,
        chance=float(np.bincount(yva, minlength=n_classes).max() / len(yva)),
        images_per_class=float(np.median(per_class)),
        num_train=totals["train"],
        num_val=len(yva),
    )
    ranking, rec, reasons = rank_strategies(sig)
    if head is None:
        reasons.append(RANDOM_HEAD)
    rec["command"] = _commands(config, ranking, rec)
    doc = {
        "format": FORMAT,
        **_run_facts(config, setup, data),
        "num_train": totals["train"],
        "num_val": totals["val"],
        "sampled": {"train": len(train), "val": len(val)},
        "images_per_class": sig.images_per_class,
        "chance": sig.chance,
        "device": str(setup.device),
        "signals": _signals_doc(sig, fits, names, head is not None, grad_batches),
        "ranking": ranking,
        "recommendation": rec,
        "reasons": reasons,
        "figure": FIGURE,
    }
    _plot(sig, rec, config, out_dir / FIGURE)
    marks = (t0, t_data, t_feat, t_probe, t_grad)
    doc["seconds"] = {k: round(b - a, 2) for k, a, b in zip(SECTIONS, marks, marks[1:], strict=False)}
    doc["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    write_text_atomic(out_dir / ADVICE_JSON, json.dumps(doc, indent=2) + "\n")
    write_text_atomic(out_dir / ADVICE_HTML, advice_page(doc))
    if not quiet:
        print(format_advice(doc), flush=True)
    return Advice(out_dir, doc)


RANDOM_HEAD = "the gradient profile used a random head (the classifier is not a linear layer on pooled features)"


def _run_facts(config: TrainConfig, setup: RunSetup, data: PreparedData) -> dict[str, Any]:
    """What advise.json records of the model and data it probed."""
    return {"model": config.model, "weights": config.weights, "weights_source": setup.weights_info.get("source"),
            "data": str(config.data), "img_size": data.img_size, "classes": data.classes}  # fmt: skip


SECTIONS = ("data", "features", "probes", "gradients")  # advise.json's "seconds", each from one mark to the next


def _depth_probes(
    feats_tr: list[np.ndarray], ytr: np.ndarray, feats_va: list[np.ndarray], yva: np.ndarray, n_classes: int
) -> tuple[list[ProbeFit], list[float], list[float]]:
    """Per depth: the linear probe's fit, k-NN's val accuracy and LogME on train."""
    fits = [linear_probe(a, ytr, b, yva, n_classes) for a, b in zip(feats_tr, feats_va, strict=True)]
    knn = [knn_accuracy(a, ytr, b, yva) for a, b in zip(feats_tr, feats_va, strict=True)]
    return fits, knn, [logme(a, ytr) for a in feats_tr]


def _head_probe(setup: RunSetup, top_fit: ProbeFit, top_tr: np.ndarray, pre_tr: np.ndarray, ytr: np.ndarray,
                pre_va: np.ndarray, yva: np.ndarray, n_classes: int) -> ProbeFit | None:  # fmt: skip
    """The probe to put in the classifier's place for the gradient profile: the last stage's when the classifier
    reads exactly those features, else one fitted on its input; None when the classifier is no linear layer."""
    import torch

    classifier = setup.model.get_classifier()
    if not isinstance(classifier, torch.nn.Linear) or classifier.in_features != pre_tr.shape[1]:
        return None
    same = pre_tr.shape == top_tr.shape and np.allclose(pre_tr, top_tr, rtol=1e-4, atol=1e-5)
    return top_fit if same else linear_probe(pre_tr, ytr, pre_va, yva, n_classes)


def _stage_names(setup: RunSetup, config: TrainConfig) -> list[str]:
    """The modules whose outputs end each stage, or one line saying the model cannot be probed stage by stage."""
    import torch

    train = setup.data.splits["train"]
    example = setup.normalize(torch.from_numpy(train.cache.store.read(train.rows[:2]))).to(setup.device)

    names = stage_outputs(setup.model, setup.smap, example)
    if names is None:
        raise ThawlineError(
            f"advise cannot tell where the stages of '{config.model}' end (its modules do not run stage by "
            "stage); it works on the EfficientNet/MobileNet, ResNet, ConvNeXt and ViT families"
        )
    return names


def _signals_doc(
    sig: Signals, fits: list[ProbeFit], names: list[str], head_fitted: bool, grad_batches: int
) -> dict[str, Any]:
    """advise.json's "signals": the probes per depth and the summary numbers the rules read."""
    return {
        "depths": [
            {
                "stage": sig.stages[d],
                "index": d,
                "module": names[d],
                "dim": sig.dims[d],
                "linear_acc": round(sig.linear[d], 4),
                "linear_ridge": fits[d].ridge,
                "linear_loo_acc": round(fits[d].loo_acc, 4),
                "knn_acc": round(sig.knn[d], 4),
                "logme": round(sig.logme[d], 5),
                "rgn": sig.rgn[d] if sig.rgn else None,
            }
            for d in range(len(sig.stages))
        ],
        "head_rgn": sig.head_rgn,
        "top_linear_acc": round(sig.linear[sig.top], 4),
        "best_depth": sig.best_depth,
        "gap": round(sig.gap, 4),
        "noise": round(sig.noise, 4),
        "rise": round(sig.rise, 4),
        "rgn_lower_half_share": _finite(sig.rgn_shares()[0]),
        "rgn_top_quarter_share": _finite(sig.rgn_shares()[1]),
        "head_fitted": head_fitted,
        "knn_k": KNN_K,
        "grad_batches": grad_batches,
    }


def _plot(sig: Signals, rec: dict[str, Any], config: TrainConfig, path: Path) -> None:

    plot_probe_depth(
        sig.stages, sig.linear, sig.knn, sig.logme, sig.rgn, path, chance=sig.chance, freeze=rec["freeze_stages"],
        title=f"{config.model} on {Path(str(config.data)).name}: frozen features after each stage",
    )  # fmt: skip


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def _commands(config: TrainConfig, ranking: list[dict[str, Any]], rec: dict[str, Any]) -> dict[str, str]:
    """The compare of the three predicted best (to check the prediction) and the train of the predicted winner."""
    import shlex

    # every option the user set but the strategy's own (and where it runs): the suggestion reruns on the same data
    flags = option_flags(config, exclude=("data", "model", "strategy", "lr", *PLACE_OPTIONS))
    base = " ".join(shlex.quote(a) for a in ["--data", str(config.data), "--model", config.model, *flags])
    top3 = [r.get("variant", r["strategy"]) for r in ranking[:3]]
    lr = {"head-only": rec["lr"]["head"], "full": rec["lr"]["body"]}.get(rec["strategy"])
    if rec["strategy"] == "partial":
        lr = rec["lr"]["partial"]
    train = f"thawline train {base} --strategy {rec['run']}" + (f" --lr {lr:g}" if lr else "")
    return {"compare": f"thawline compare {base} --strategies {','.join(top3)}", "train": train}
