"""Peak RSS and speed of `thawline train --strategy partial --img-size 224` (Lite0) for several train sizes.

    python benchmarks/memory.py                          # 2,000 and 10,000 train images, val capped at 5,000
    python benchmarks/memory.py --sizes 2000,10000,54000 --malloc both --no-hflip
    python benchmarks/memory.py --sizes 500 --val 500 -- --min-steps 0      # after --: more `thawline train` flags

Each run is a fresh `python -m thawline train` subprocess on a view of the data folder (train/ linked, val/ capped
at --val images, balanced over classes; no test/, so the final evaluation is on val), `--max-per-class` giving the
train size. The feature cache is emptied before every run, so the frozen-prefix pass is measured; the decoded-image
cache is kept (--cache-dir, default under --work). Peak RSS is the kernel's count for the child (ru_maxrss from
wait4, what /usr/bin/time -v prints as "Maximum resident set size"; it includes the report built after training)
and the run's own `peak_rss_mb` from summary.json. img/s is the run's (train images / train seconds, the feature
pass included). `--malloc both` runs every size with the kept-memory allocator (thawline's default) and with
THAWLINE_MALLOC=default, back to back, so the allocator's speed-up and its memory cost come from the same session.
The load average is printed before and after: on a shared machine repeat and compare spreads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def class_dirs(split: Path) -> list[Path]:
    return sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def make_view(data: Path, view: Path, val_cap: int) -> int:
    """view/train -> data/train; view/val: the first val_cap / n_classes images of each class (symlinks).
    Returns the number of classes."""
    classes = class_dirs(data / "train")
    if view.exists():
        shutil.rmtree(view)
    (view / "val").mkdir(parents=True)
    (view / "train").symlink_to((data / "train").resolve(), target_is_directory=True)
    per_class = max(1, val_cap // len(classes))
    for c in class_dirs(data / "val"):
        files = sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:per_class]
        (view / "val" / c.name).mkdir()
        for f in files:
            (view / "val" / c.name / f.name).symlink_to(f.resolve())
    return len(classes)


def run_once(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float]:
    """Run `cmd`; (exit status, peak RSS in MiB from wait4's ru_maxrss, wall seconds)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    kib = usage.ru_maxrss if sys.platform.startswith("linux") else usage.ru_maxrss / 1024  # macOS: bytes
    return proc.returncode, kib / 1024, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/fashion-mnist", help="ImageFolder root with train/ and val/")
    parser.add_argument("--sizes", default="2000,10000", help="train sizes (images), comma-separated")
    parser.add_argument("--val", type=int, default=5000, help="val images (capped, balanced over classes)")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--strategy", default="partial")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--no-hflip", action="store_true", help="one view per image (halves an eager feature pass)")
    parser.add_argument("--malloc", choices=("kept", "default", "both"), default="kept",
                        help="kept: thawline's allocator setting; default: THAWLINE_MALLOC=default; both")  # fmt: skip
    parser.add_argument("--work", default="runs/bench-memory", help="views, run folders and logs go here")
    parser.add_argument("--cache-dir", default=None, help="image/feature cache (default WORK/cache)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    data = Path(args.data)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        print(f"{data} has no train/ and val/; run `thawline data prepare fashion-mnist` first", file=sys.stderr)
        return 2
    work = (ROOT / args.work).resolve() if not Path(args.work).is_absolute() else Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    n_classes = make_view(data.resolve(), work / "data", args.val)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    mallocs = ["kept", "default"] if args.malloc == "both" else [args.malloc]
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs; val {args.val}, "
          f"{args.img_size} px, {args.strategy}, {args.model}", flush=True)  # fmt: skip
    rows = []
    for size in sizes:
        for malloc in mallocs:
            name = f"n{size}-{malloc}"
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache / "features", ignore_errors=True)  # measure the frozen-prefix pass every time
            cmd = [
                sys.executable, "-m", "thawline", "train", "--data", str(work / "data"), "--model", args.model,
                "--strategy", args.strategy, "--img-size", str(args.img_size), "--epochs", str(args.epochs),
                "--max-per-class", str(max(1, size // n_classes)), "--cache-dir", str(cache), "--out", str(out),
                "--quiet", *(["--no-hflip"] if args.no_hflip else []), *extra,
            ]  # fmt: skip
            env = {**os.environ}
            env.pop("THAWLINE_MALLOC", None)
            if malloc == "default":
                env["THAWLINE_MALLOC"] = "default"
            code, peak, wall = run_once(cmd, env, work / f"{name}.log")
            summary_path = out / "summary.json"
            if not summary_path.is_file():
                print(f"{name}: failed (exit {code}); see {work / f'{name}.log'}", file=sys.stderr)
                return 1
            if code != 0:
                print(f"{name}: training finished but the command exited {code} (see {work / f'{name}.log'})",
                      file=sys.stderr)  # fmt: skip
            s = json.loads(summary_path.read_text())
            row = {"size": s["num_train"], "malloc": malloc, "peak_rss_mib": round(peak), "run_peak_rss_mib":
                   s["peak_rss_mb"], "images_per_s": s["images_per_s"], "wall_s": round(wall, 1)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'train':>7} {'allocator':>9} {'peak RSS MiB':>12} {'run peak MiB':>12} {'img/s':>7} {'wall s':>7}")
    for r in rows:
        print(f"{r['size']:>7} {r['malloc']:>9} {r['peak_rss_mib']:>12} {r['run_peak_rss_mib']:>12.0f} "
              f"{r['images_per_s']:>7.1f} {r['wall_s']:>7.0f}")  # fmt: skip
    for malloc in mallocs:
        mine = [r for r in rows if r["malloc"] == malloc]
        if len(mine) > 1:
            first, last = mine[0], mine[-1]
            print(f"{malloc}: peak RSS {last['size']} / {first['size']} images = "
                  f"{last['peak_rss_mib'] / first['peak_rss_mib']:.3f}")  # fmt: skip
    (work / "memory.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
