"""The seeds' plain training loop against thawline, back to back on the same data, model, image size and recipe.

Prints one line per workload with both throughputs and their ratio, then a summary line. Ratios come from this
one run on this machine (never compare absolute img/s across machines).

    python benchmarks/seed_vs_thawline.py                          # lite0 at 224 and 112, resnet50 at 112
    python benchmarks/seed_vs_thawline.py --models resnet50 --sizes 224 --images 1000
    python benchmarks/seed_vs_thawline.py --rss                    # + peak RSS at 10k and 60k images

The seed loop (seed_loop.py, copied from the seed scripts) runs in a fresh process of its own: torchvision
ImageFolder + PIL transforms per sample (Resize, RandomHorizontalFlip, ToTensor, Normalize), DataLoader batch 32,
Adam, cross-entropy, freezing only by `requires_grad=False` with the whole model in train mode. Its throughput is
measured over `--seed-batches` batches after one warm-up batch (each of its epochs costs the same); thawline trains
whole epochs in this process and reports its own per-epoch img/s in metrics.jsonl. Random-init weights: timing does
not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import thawline
from thawline.data import prepare_fashion_mnist
from thawline.models import build_model, stage_map
from thawline.training import get_strategy, resolve

WORKLOADS = ("head-only", "partial", "full")


def seed_throughput(data: Path, model_name: str, size: int, strategy: str, batches: int, work: Path) -> float:
    """Images/s of the seeds' loop for the first phase of `strategy`, in a fresh process (seed_loop.py).

    The process gets this environment without thawline's OpenMP setting, and never imports thawline, so the
    seed loop runs with the defaults the seed scripts had (thawline's allocator setting is process-wide)."""
    model = build_model(model_name, "none", 10)
    smap = stage_map(model)
    trainable = set(resolve(get_strategy(strategy), smap.n_stages, None)[0].trainable)
    names = [name for name, stage in smap.stage_of().items() if stage in trainable]
    spec = work / f"trainable-{model_name}-{strategy}.json"
    spec.write_text(json.dumps(names))
    ours = thawline.SPIN if thawline.OMP_WAIT_POLICY == "ACTIVE" else thawline.SHARED
    ours = ours if thawline.OMP_CHOSEN_HERE else {}
    env = {k: v for k, v in os.environ.items() if ours.get(k) != v}
    cmd = [sys.executable, str(Path(__file__).with_name("seed_loop.py")), "--data", str(data), "--model", model_name,
           "--size", str(size), "--trainable", str(spec), "--batches", str(batches)]
    out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def thawline_run(data: Path, model_name: str, size: int, strategy: str, epochs: int, out: Path) -> dict:
    # A fresh cache folder per run: every run pays for its own decoding and feature pass, as the seed loop does.
    run = out / f"{model_name}-{size}-{strategy}"
    shutil.rmtree(run, ignore_errors=True)
    cfg = thawline.make_config(data=str(data), model=model_name, weights="none", strategy=strategy, epochs=epochs,
                               img_size=size, preset="seed", cache_dir=str(run / "cache"))
    started = time.perf_counter()
    result = thawline.train(cfg, run_dir=run, quiet=True)
    rows = result.metrics
    return {"epochs": [r["images_per_s"] for r in rows], "wall": time.perf_counter() - started,
            "rss": result.summary["peak_rss_mb"]}


def rss_for(n_per_class: int, size: int, workdir: Path) -> float:
    """Peak RSS of a thawline head-only run over n_per_class*10 images at `size` px, in a fresh process."""
    data = workdir / f"rss-{n_per_class}"
    prepare_fashion_mnist(data, per_class=n_per_class, val_per_class=10, test_per_class=1)
    out = workdir / f"rss-run-{n_per_class}"
    cmd = [sys.executable, "-m", "thawline", "train", "--data", str(data), "--model", "test_efficientnet",
           "--weights", "none", "--strategy", "head-only", "--epochs", "1", "--img-size", str(size),
           "--out", str(out), "--cache-dir", str(workdir / "cache"), "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tf_efficientnet_lite0,resnet50")
    parser.add_argument("--sizes", default="224,112")
    parser.add_argument("--images", type=int, default=1000, help="train images (Fashion-MNIST, balanced)")
    parser.add_argument("--seed-batches", type=int, default=12, help="timed batches of the seed loop")
    parser.add_argument("--epochs", type=int, default=3, help="thawline epochs per workload (cache in epoch 1)")
    parser.add_argument("--skip", default="resnet50@224", help="model@size pairs to skip (slowest on 2 cores)")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS at 10k and 60k images")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="thawline-bench-"))
    data = work / f"fmnist-{args.images}"
    prepare_fashion_mnist(data, per_class=max(1, args.images // 10), val_per_class=10, test_per_class=1)
    print(f"data: {data} ({args.images} train images), threads {torch.get_num_threads()}", flush=True)
    ratios: dict[str, list[float]] = {}
    skip = set(filter(None, args.skip.split(",")))
    for model_name in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            if f"{model_name}@{size}" in skip:
                print(f"{model_name}@{size}: skipped (--skip)", flush=True)
                continue
            seed_ips = {}
            for workload in WORKLOADS:
                seed = seed_throughput(data, model_name, size, workload, args.seed_batches, work)
                seed_ips[workload] = seed
                ours = thawline_run(data, model_name, size, workload, args.epochs, work)
                later = ours["epochs"][1:] or ours["epochs"]
                first, steady = ours["epochs"][0], sum(later) / len(later)
                mean_all = args.epochs * args.images / sum(args.images / e for e in ours["epochs"])
                key = f"{workload} (epochs after the first)" if workload == "head-only" else f"{workload} per epoch"
                value = steady if workload == "head-only" else mean_all
                ratios.setdefault(key, []).append(value / seed)
                print(f"{model_name:>22} {size:>4}px {workload:<10} seed {seed:8.1f} img/s | thawline epoch1 "
                      f"{first:9.1f}, later {steady:9.1f}, mean {mean_all:9.1f} img/s | ratio {value / seed:7.1f}x "
                      f"| rss {ours['rss']:.0f} MB", flush=True)
            # the whole seed two-phase recipe (1 head epoch + 1 full epoch), wall clock
            two = thawline_run(data, model_name, size, "two-phase", 2, work)
            seed_wall = args.images / seed_ips["head-only"] + args.images / seed_ips["full"]
            ratio = seed_wall / two["wall"]
            ratios.setdefault("two-phase recipe wall clock", []).append(ratio)
            print(f"{model_name:>22} {size:>4}px two-phase  seed {seed_wall:8.1f} s (from its img/s) | thawline "
                  f"{two['wall']:8.1f} s (measured, incl. caches and eval) | ratio {ratio:7.1f}x", flush=True)
    if args.rss:
        small, large = rss_for(1000, 224, work), rss_for(6000, 224, work)
        print(f"peak RSS at 224px: 10k images {small:.0f} MB, 60k images {large:.0f} MB "
              f"(growth {100 * (large / small - 1):+.1f}%)", flush=True)
    summary = ", ".join(f"{k}: min {min(v):.1f}x" for k, v in ratios.items())
    print(f"SUMMARY {summary}", flush=True)


if __name__ == "__main__":
    main()
