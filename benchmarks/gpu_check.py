"""thawline vs timm's train.py on one GPU: the same full fine-tune, back to back, in one run; prints the ratio.

Both train ResNet-50 (random init: no hub needed; speed does not depend on the starting weights) with bf16
autocast and channels_last at batch 256 on the same generated ImageFolder of JPEGs (256 px, trained at 224),
for the same epochs, with the same optimizer (AdamW, cosine, label smoothing 0.1) and only a horizontal flip as
augmentation (timm: RandomResizedCrop pinned to scale 1, ratio 1, no colour jitter). The runs alternate
(thawline, timm, thawline, timm, ...) so drift of the machine affects both; each thawline run starts with an
empty cache, so its one-time decode is inside its wall time.

    python benchmarks/gpu_check.py                      # the measurement (make gpu-check runs it)
    python benchmarks/gpu_check.py --smoke --device cpu # a seconds-long check of this script on a CPU

timm's train.py is vendored in benchmarks/third_party/ (Apache-2.0, commit noted there)."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TIMM_TRAIN = HERE / "third_party" / "timm_train.py"


def _draw(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image, ImageDraw

    path, cls, seed, size = args
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 80, (size, size, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(cls + 1):  # class = number of shapes, at random places and colours
        r = int(rng.integers(size // 12, size // 4))
        x, y = rng.integers(0, size - r, 2)
        draw.ellipse((x, y, x + r, y + r), fill=tuple(int(c) for c in rng.integers(120, 256, 3)))
    img.save(path, quality=90)


def make_data(root: Path, classes: int, per_class: int, val_per_class: int, size: int) -> Path:
    jobs = []
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(folder / f"{i}.jpg", c, hash((split, c, i)) & 0xFFFFFFF, size) for i in range(n)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_draw, jobs, chunksize=64))
    return root


def run_timed(cmd: list[str], log: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return seconds


def thawline_cmd(a: argparse.Namespace, data: Path, out: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "thawline", "train", "--data", str(data), "--model", a.model, "--weights", "none",
        "--strategy", "full", "--img-size", str(a.img_size), "--batch-size", str(a.batch_size),
        "--epochs", str(a.epochs), "--lr", "1e-3", "--min-steps", "0", "--head-steps", "0", "--warmup-epochs", "0",
        "--device", a.device, "--amp" if a.device == "cuda" else "--no-amp", "--channels-last",
        "--workers", str(a.workers), "--cache-dir", str(cache), "--out", str(out),
    ]  # fmt: skip


def timm_cmd(a: argparse.Namespace, data: Path, out: Path) -> list[str]:
    cmd = [
        sys.executable, str(TIMM_TRAIN), str(data), "--model", a.model, "--num-classes", str(a.classes),
        "--img-size", str(a.img_size), "-b", str(a.batch_size), "--epochs", str(a.epochs),
        "--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.01", "--sched", "cosine", "--warmup-epochs", "0",
        "--smoothing", "0.1", "--scale", "1", "1", "--ratio", "1", "1", "--color-jitter", "0", "--hflip", "0.5",
        "--val-split", "val", "-j", str(a.workers), "--pin-mem", "--channels-last", "--checkpoint-hist", "1",
        "--log-interval", "10", "--device", a.device, "--output", str(out),
    ]  # fmt: skip
    return cmd + (["--amp", "--amp-dtype", "bfloat16"] if a.device == "cuda" else [])


def timm_rate(log: Path) -> float | None:
    """Median of train.py's per-step images/s over the last epoch's log lines (steady state)."""
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("Train:")]
    if not lines:
        return None
    last_epoch = lines[-1].split()[1]
    rates = [
        float(m.group(1))
        for ln in lines
        if ln.split()[1] == last_epoch and (m := re.search(r"s,\s+([\d.]+)/s", ln))
    ]
    return statistics.median(rates) if rates else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--model", default="resnet50")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=256, help="side of the generated JPEGs")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--out", default=None, help="folder for logs and results (default: a temp folder)")
    p.add_argument("--smoke", action="store_true", help="tiny model and data: checks this script in seconds")
    p.add_argument(
        "--thawline-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for thawline's runs only (repeatable), e.g. THAWLINE_PREFETCH=0 to measure "
        "the loop without its prefetch thread; timm's runs keep the plain environment",
    )
    a = p.parse_args()
    if a.smoke:
        a.model, a.per_class, a.val_per_class, a.size, a.img_size, a.batch_size, a.epochs, a.repeats = (
            "test_resnet", 16, 4, 48, 32, 16, 1, 1,
        )
    out = Path(a.out or tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    thawline_env = env | dict(kv.split("=", 1) for kv in a.thawline_env)
    start = time.perf_counter()
    data = make_data(out / "data", a.classes, a.per_class, a.val_per_class, a.size)
    print(f"data: {a.classes} classes x {a.per_class} train JPEGs ({a.size} px) in {time.perf_counter() - start:.1f}s")
    results: dict[str, list] = {"thawline_s": [], "timm_s": [], "thawline_img_s": [], "timm_img_s": []}
    failed = False
    for r in range(a.repeats):
        t_out = out / f"thawline-{r}"
        line = f"repeat {r + 1}:"
        try:  # a failure of one side still measures the other (one GPU session may be all there is)
            seconds = run_timed(
                thawline_cmd(a, data, t_out, out / f"cache-{r}"), out / f"thawline-{r}.log", thawline_env
            )
            summary = json.loads((t_out / "summary.json").read_text())
            results["thawline_s"].append(seconds)
            results["thawline_img_s"].append(summary["images_per_s"])
            line += (
                f" thawline {seconds:.1f}s ({summary['images_per_s']} img/s in epochs, val acc "
                f"{summary['best_val_acc']:.3f}, peak GPU {summary['peak_gpu_mb']} MB) |"
            )
        except RuntimeError as e:
            failed = True
            print(f"thawline {e}", flush=True)
        try:
            seconds = run_timed(timm_cmd(a, data, out / f"timm-{r}"), out / f"timm-{r}.log", env)
            results["timm_s"].append(seconds)
            results["timm_img_s"].append(timm_rate(out / f"timm-{r}.log"))
            line += f" timm train.py {seconds:.1f}s ({results['timm_img_s'][-1]} img/s last epoch)"
        except RuntimeError as e:
            failed = True
            print(f"timm {e}", flush=True)
        print(line, flush=True)
    if failed:
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
        sys.exit("gpu-check: a run failed (above); partial results in " + str(out / "gpu_check.json"))
    ratios = [b / t for t, b in zip(results["thawline_s"], results["timm_s"], strict=True)]
    results["wall_ratio_timm_over_thawline"] = ratios
    results["setup"] = {k: v for k, v in vars(a).items() if k != "out"}
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print(
        f"{a.model}, batch {a.batch_size}, {a.epochs} epochs, {a.classes * a.per_class} images at {a.img_size} px on "
        f"{a.device}: timm train.py wall time / thawline's = {statistics.median(ratios):.2f}x "
        f"(runs: {', '.join(f'{x:.2f}' for x in ratios)}); results in {out / 'gpu_check.json'}"
    )


if __name__ == "__main__":
    main()
