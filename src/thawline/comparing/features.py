"""The advisor's torch side: a stratified sample through the decode-once cache, one backbone pass collecting every
stage's pooled output, and the gradient profile (relative gradient norm per stage)."""

from __future__ import annotations

import hashlib
import math
import sys
from typing import TYPE_CHECKING

import numpy as np

from thawline.comparing.probes import ProbeFit
from thawline.core.config import TrainConfig
from thawline.data.feature_cache import FeatureCache, state_fingerprint
from thawline.models.stages import eval_mode, pool_output
from thawline.training.prepare import PreparedData, RunSetup, SplitData, decode_split, discover_data, warn_skipped
from thawline.training.sources import image_batches

if TYPE_CHECKING:
    import torch



# ---- data: a stratified sample through the decode-once cache ---------------------------------------------------


def sample_indices(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Up to `cap` positions, each class keeping its share (every class at least one); sorted, so a sample that
    is the whole split lists the same files in the same order as training (and shares its image cache)."""
    labels = np.asarray(labels)
    n = len(labels)
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keys = np.empty(n)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keys[idx[rng.permutation(len(idx))]] = (np.arange(len(idx)) + rng.random()) / len(idx)
        keys[idx[np.argmin(keys[idx])]] = -1.0  # every class present
    return np.sort(np.argsort(keys, kind="stable")[:cap])


def sample_data(
    config: TrainConfig, max_train: int, max_val: int, quiet: bool
) -> tuple[PreparedData, dict[str, int], np.ndarray]:
    """(sampled data, image counts of the whole splits, train images per class in the whole folder)."""
    found, img_size, interpolation = discover_data(config)
    splits: dict[str, SplitData] = {}
    skipped = [(s.path, s.reason) for s in found.skipped]
    totals: dict[str, int] = {}
    for name, cap in (("train", max_train), ("val", max_val)):
        files = found.splits[name]
        labels = np.asarray(files.labels, dtype=np.int64)
        totals[name] = len(labels)
        pick = sample_indices(labels, cap, config.seed)
        paths = [files.paths[i] for i in pick]
        splits[name], bad = decode_split(found, name, paths, labels[pick], config, img_size, interpolation, quiet)
        skipped.extend(bad)
    warn_skipped(found.skipped, len(skipped) - len(found.skipped), "`thawline data check`")
    per_class = np.bincount(np.asarray(found.splits["train"].labels), minlength=len(found.classes))
    return PreparedData(found, img_size, interpolation, splits, skipped), totals, per_class


def sample_prepared(
    data: PreparedData, max_train: int, max_val: int, seed: int
) -> tuple[PreparedData, dict[str, int], np.ndarray]:
    """sample_data's result from data a caller already prepared (compare): rows of its decode-once cache, no
    second decode."""
    from dataclasses import replace

    splits: dict[str, SplitData] = {}
    totals: dict[str, int] = {}
    for name, cap in (("train", max_train), ("val", max_val)):
        split = data.splits[name]
        totals[name] = len(split)
        pick = sample_indices(split.labels, cap, seed)
        splits[name] = SplitData(
            name, split.cache, [split.paths[i] for i in pick], split.labels[pick], split.rows[pick]
        )
    per_class = np.bincount(data.splits["train"].labels, minlength=len(data.classes))
    return replace(data, splits=splits), totals, per_class


# ---- the backbone pass: pooled features after every stage ------------------------------------------------------


def collect_features(
    setup: RunSetup, split: SplitData, names: list[str], quiet: bool
) -> tuple[list[np.ndarray], np.ndarray]:
    """(pooled features after each stage, the classifier's input) for every image of `split`, one backbone pass
    (eval, no grad), kept in the frozen-feature cache folder so a second advise reads them back."""
    import torch
    from tqdm import tqdm

    model = setup.model
    modules = dict(model.named_modules())
    classifier = model.get_classifier()
    captured: dict[str, torch.Tensor] = {}
    dims: list[int] = []

    @torch.inference_mode()
    def compute(idx: np.ndarray, views: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(split.cache.store.read(split.rows[idx]))
        flip = torch.from_numpy(np.asarray(views) == 1)
        if flip.any():
            rows[flip] = rows[flip].flip(2)
        captured.clear()
        hooks = [
            modules[n].register_forward_hook(lambda _m, _i, out, n=n: captured.update({n: pool_output(out)}))
            for n in names
        ]
        hooks.append(classifier.register_forward_pre_hook(lambda _m, inp: captured.update({"": pool_output(inp[0])})))
        try:

            amp = torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.amp)
            with eval_mode(model), amp:
                model(setup.normalize(rows).to(setup.device))
        finally:
            for h in hooks:
                h.remove()
        parts = [captured[n] for n in names] + [captured[""]]
        if not dims:
            dims.extend(p.shape[1] for p in parts)
        return torch.cat(parts, dim=1).float().cpu()

    head_modules = {p.rsplit(".", 1)[0] for p in setup.smap.params[setup.smap.head]}
    state = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in head_modules}
    key = "_".join(
        [
            "advise",
            setup.config.model.replace("/", "_"),
            split.cache.key,
            state_fingerprint(state),
            f"amp{int(setup.amp)}cl{int(setup.channels_last)}",
            str(len(split)),
            hashlib.sha1(f"{split.rows.tolist()}|{names}".encode()).hexdigest()[:10],
        ]
    )
    compute(np.arange(1), np.zeros(1, np.int64))  # one image: the width of each depth (also when read from the cache)
    store = FeatureCache(key, len(split), 1, compute, setup.config.batch_size * 2, setup.cache_dir)
    if not store.complete:
        bar = tqdm(
            total=len(split),
            initial=store.filled.sum(),
            desc=f"features {split.name}",
            unit="img",
            disable=quiet or not sys.stderr.isatty(),
        )
        store.fill_all(bar.update)
        bar.close()
    flat = store.read(np.arange(len(split)), np.zeros(len(split), dtype=np.int64)).reshape(len(split), -1)
    store.close()
    bounds = np.cumsum([0, *dims])
    parts = [flat[:, bounds[i] : bounds[i + 1]].astype(np.float64) for i in range(len(dims))]
    return parts[:-1], parts[-1]


# ---- gradient profile --------------------------------------------------------------------------------------


def gradient_profile(setup: RunSetup, split: SplitData, head: ProbeFit | None, batches: int) -> list[float]:
    """Mean over `batches` train batches of ||g|| / ||w|| per stage (body stages, then the head), the model in
    eval mode (BatchNorm on running statistics, no dropout) with its head set to `head` when given."""
    import torch

    model, smap = setup.model, setup.smap
    params = dict(model.named_parameters())
    if head is not None:
        classifier = model.get_classifier()
        with torch.no_grad():
            classifier.weight.copy_(torch.from_numpy(head.weight.T).to(classifier.weight))
            classifier.bias.copy_(torch.from_numpy(head.bias).to(classifier.bias))
    for p in params.values():
        p.requires_grad_(True)
    sums = np.zeros(len(smap.names))
    done = 0
    model.eval()
    amp = torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.amp)
    it = image_batches(
        split, setup.config.batch_size, setup.normalize, shuffle=True, hflip=False, seed=setup.config.seed
    )
    for x, y in it:
        if done == batches:
            break
        model.zero_grad(set_to_none=True)
        with amp:
            loss = setup.loss_fn(model(x.to(setup.device)), y.to(setup.device))
        loss.backward()
        for s, names in enumerate(smap.params):
            g = sum(float(params[n].grad.double().pow(2).sum()) for n in names if params[n].grad is not None)
            w = sum(float(params[n].detach().double().pow(2).sum()) for n in names)
            sums[s] += math.sqrt(g) / math.sqrt(w) if w > 0 else 0.0
        done += 1
    model.zero_grad(set_to_none=True)
    return (sums / max(done, 1)).tolist()
