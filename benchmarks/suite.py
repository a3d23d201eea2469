"""Baselines and thawline side by side on every task of the benchmark suite (benchmarks/suite/build.py).

    python benchmarks/suite.py                                   # every task, all seven strategies (hours)
    python benchmarks/suite.py --tasks digits,faces --epochs 2 --strategies head-only,full --out runs/suite-smoke

Per task, in this one process and back to back, on the same images, model, resolution and preprocessing
(tf_efficientnet_lite0 with thawline's embedded ImageNet weights, the task's recommended img_size, bicubic resize,
mean/std 0.5 — all read from the model's timm config exactly as thawline does, through `thawline.data.images`):

(a) probe: a logistic regression on the frozen backbone's pooled features (`forward_head(forward_features(x),
    pre_logits=True)`, eval mode), standardised, C chosen by stratified cross-validation on train only
    (scikit-learn's LogisticRegressionCV, C = 1e-5 ... 10, 5 folds; 3 from 2000 train images on).
(b) fastai: `Learner.fine_tune` on the same timm model with a fresh head (body and classifier as its two parameter
    groups; fastai's defaults otherwise: Adam, one-cycle, base LR 2e-3, BatchNorm of the frozen body still
    training), batch 32, the same total epoch budget (`fine_tune(E - 1, freeze_epochs=1)`: one frozen epoch then
    E - 1 unfrozen; with E = 1 only the frozen epoch), horizontal flips when the task allows them, and the weights
    of the best val epoch (SaveModelCallback), as thawline reports. On small data thawline repeats passes over
    the train set within an epoch until the run has `min_steps` optimizer steps; fastai's epochs are multiplied by
    the same number of passes (`passes_per_epoch` in the results), so both take the same number of steps.
    Skipped with a note when fastai is not importable (pip install -e '.[bench]').
(c) thawline: `thawline.compare` with the strategies (all seven by default), `--epochs E` each, default recipe.
    Each task gets a fresh cache folder, so thawline pays for its own decoding and feature passes.

Decoding the images for (a) and (b) happens once and its time is added to both wall times.
The epoch budget is the task manifest's `epochs` unless `--epochs` is given. Test accuracy is on the task's
test split; thawline's pick is the strategy with the best val accuracy (how you would choose without the test
set); the winner is the best test accuracy of any column. Results go to OUT/suite_results.json and
OUT/suite_results.md (rewritten after every task), the thawline runs to OUT/runs/<task>/.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import thawline
from thawline import ThawlineError
from thawline.comparing import parse_strategies
from thawline.data import IMAGE_EXTENSIONS, decode_resized
from thawline.models import build_model_with_info
from thawline.training import data_settings

MODEL = "tf_efficientnet_lite0"
WEIGHTS = "default"
ALL_STRATEGIES = ("head-only", "two-phase", "layer-wise", "partial", "gradual", "full", "scratch")
BATCH = 32
SPLITS = ("train", "val", "test")
PROBE_CS = np.logspace(-5, 1, 7)  # the probe's grid of C, on standardised features
HERE = Path(__file__).resolve().parent


def load_builder():
    """benchmarks/suite/build.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("suite_build", HERE / "suite" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


# ---- data ------------------------------------------------------------------------------------------------------


def read_split(root: Path, classes: list[str], size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 and labels, decoded and resized exactly as thawline's decode-once cache does."""
    images, labels = [], []
    for ci, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(decode_resized(path, size, interpolation))
                labels.append(ci)
    return np.stack(images), np.asarray(labels, np.int64)


def to_input(batch: np.ndarray | torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    x = torch.as_tensor(batch).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ---- (a) logistic-regression probe --------------------------------------------------------------------------


@torch.inference_mode()
def pooled_features(model: torch.nn.Module, images: np.ndarray, mean: tuple, std: tuple) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images), 128):
        x = to_input(images[i : i + 128], mean, std)
        out.append(model.forward_head(model.forward_features(x), pre_logits=True))
    return torch.cat(out).numpy()


def run_probe(data: dict, n_classes: int, mean: tuple, std: tuple) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    torch.manual_seed(0)
    model, _ = build_model_with_info(MODEL, WEIGHTS, n_classes)
    feats = {s: pooled_features(model, data[s][0], mean, std) for s in SPLITS}
    feature_s = time.perf_counter() - started
    y_train = data["train"][1]
    # 5 folds (3 from 2000 train images on: the fits dominate the probe's time there), never more than the
    # smallest class has images
    folds = int(min(5 if len(y_train) < 2000 else 3, np.bincount(y_train).min()))
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=PROBE_CS, cv=cv, max_iter=2000))
    with warnings.catch_warnings():  # scikit-learn 1.9 announces new LogisticRegressionCV defaults
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(feats["train"], y_train)
    return {
        "test_acc": float(clf.score(feats["test"], data["test"][1])),
        "val_acc": float(clf.score(feats["val"], data["val"][1])),
        "C": float(np.ravel(clf[-1].C_)[0]),
        "cv_folds": folds,
        "feature_s": round(feature_s, 2),
        "wall_s": round(time.perf_counter() - started, 2),
    }


# ---- (b) fastai fine_tune --------------------------------------------------------------------------------------


def fastai_available() -> str | None:
    """None when fastai imports, else why not."""
    try:
        with warnings.catch_warnings():  # torch.jit.script deprecation, from fastai's imports
            warnings.simplefilter("ignore", FutureWarning)
            import fastai.callback.schedule  # noqa: F401  (adds Learner.fine_tune)
            import fastai.learner  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"fastai not importable ({type(e).__name__}: {e}); pip install -e '.[bench]'"
    return None


def passes_per_epoch(cfg, n_train: int, epochs: int) -> int:
    """Passes over the train set per epoch that thawline's `min_steps` gives a non-head phase (1 on bigger data).

    thawline repeats passes within an epoch when the whole budget has fewer than `min_steps` optimizer steps;
    fastai gets the same number of passes per epoch, so both take the same number of steps."""
    min_steps = int(getattr(cfg, "min_steps", 0) or 0)
    steps_per_pass = -(-n_train // cfg.batch_size)
    return max(1, round(min_steps / max(1, steps_per_pass * epochs)))


def run_fastai(data: dict, n_classes: int, mean: tuple, std: tuple, epochs: int, hflip: bool,
               passes: int = 1) -> dict[str, Any]:
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.callback.tracker import SaveModelCallback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.torch_core import params, set_seed

    started = time.perf_counter()
    set_seed(0, reproducible=True)
    model, _ = build_model_with_info(MODEL, WEIGHTS, n_classes)
    head = model.get_classifier()
    head_ids = {id(p) for p in head.parameters()}

    def splitter(m: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
        return [[p for p in params(m) if id(p) not in head_ids], list(head.parameters())]

    flips = torch.Generator().manual_seed(0)

    def prepare(train: bool):
        def after_batch(b):
            x, y = b
            x = to_input(x, mean, std)
            if train and hflip:
                flip = torch.rand(len(x), generator=flips) < 0.5
                x[flip] = x[flip].flip(-1)
            return x, y

        return after_batch

    def loader(split: str, train: bool) -> DataLoader:
        images, labels = data[split]
        ds = torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
        return DataLoader(ds, bs=BATCH if train else 2 * BATCH, shuffle=train, drop_last=False, num_workers=0,
                          after_batch=prepare(train))

    dls = DataLoaders(loader("train", True), loader("val", False), device=torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="suite-fastai-") as tmp:
        learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, splitter=splitter,
                        path=tmp, model_dir=".")
        best = SaveModelCallback(monitor="accuracy", comp=np.greater, fname="best", with_opt=False,
                                 reset_on_fit=False)
        # no_logging silences the recorder; SaveModelCallback prints its own lines
        with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()):
            if epochs >= 2:
                learn.fine_tune((epochs - 1) * passes, freeze_epochs=passes, cbs=[best])
            else:  # fine_tune's frozen epoch alone: the whole budget
                learn.freeze()
                learn.fit_one_cycle(passes, 2e-3, pct_start=0.99, cbs=[best])
            val_acc = float(learn.validate()[1])
            preds, targets = learn.get_preds(dl=loader("test", False))
    test_acc = float((preds.argmax(1) == targets).float().mean())
    wall = round(time.perf_counter() - started, 2)
    return {"test_acc": test_acc, "val_acc": val_acc, "epochs": epochs, "passes_per_epoch": passes,
            "fastai_epochs": epochs * passes, "wall_s": wall}


# ---- (c) thawline compare -------------------------------------------------------------------------------------


def run_thawline(cfg, strategies: list[str], out: Path, resume: bool) -> dict[str, Any]:
    started = time.perf_counter()
    result = thawline.compare(cfg, strategies, out=out, resume=resume, quiet=True)
    wall = time.perf_counter() - started
    by_name = {
        r["strategy"]: {
            "test_acc": r.get("test_acc"),
            "best_val_acc": r.get("best_val_acc"),
            "wall_time_s": r.get("wall_time_s"),
            "train_time_s": r.get("train_time_s"),
            "tied_with_pick": r.get("tied"),  # McNemar on test vs the pick (None for the pick itself)
            "p_vs_pick": r.get("p_vs_winner"),
        }
        for r in result.rows
    }
    pick = result.winner
    return {"strategies": by_name, "pick": pick, "pick_test_acc": by_name[pick]["test_acc"], "wall_s": round(wall, 2),
            "out": str(result.out_dir)}


# ---- one task ---------------------------------------------------------------------------------------------------


def task_config(task_dir: Path, img_size: int, epochs: int, hflip: bool, cache: Path):
    """thawline's options for a task: the suite's model and batch, the task's size, budget and flips."""
    return thawline.make_config(data=str(task_dir), model=MODEL, weights=WEIGHTS, img_size=img_size, epochs=epochs,
                                batch_size=BATCH, hflip=hflip, cache_dir=str(cache))


def run_task(task_dir: Path, manifest: dict, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    name = manifest["task"]
    epochs = args.epochs or manifest["epochs"]
    img_size = manifest["img_size"]
    hflip = bool(manifest.get("hflip", True))
    classes = sorted(p.name for p in (task_dir / "train").iterdir() if p.is_dir())
    row: dict[str, Any] = {
        "task": name, "kind": manifest.get("kind"), "n_classes": len(classes), "counts": manifest.get("counts"),
        "img_size": img_size, "epochs": epochs, "hflip": hflip, "strategies": args.strategy_list,
    }
    cache = out / "cache" / name
    shutil.rmtree(cache, ignore_errors=True)
    cfg = task_config(task_dir, img_size, epochs, hflip, cache)
    size, interpolation, mean, std = data_settings(build_model_with_info(MODEL, "none", 2)[0], cfg)
    row["preprocessing"] = {"img_size": size, "interpolation": interpolation, "mean": list(mean), "std": list(std)}

    started = time.perf_counter()
    data = {s: read_split(task_dir / s, classes, size, interpolation) for s in SPLITS}
    decode_s = time.perf_counter() - started
    row["decode_s"] = round(decode_s, 2)

    row["probe"] = attempt(name, "probe", lambda: run_probe(data, len(classes), mean, std))
    if "wall_s" in row["probe"]:
        row["probe"]["wall_s"] = round(row["probe"]["wall_s"] + decode_s, 2)

    missing = fastai_available()
    if missing:
        row["fastai"] = {"skipped": missing}
        log(f"[{name}] fastai skipped: {missing}")
    else:
        passes = passes_per_epoch(cfg, len(data["train"][1]), epochs)
        row["fastai"] = attempt(name, "fastai",
                                lambda: run_fastai(data, len(classes), mean, std, epochs, hflip, passes))
        if "wall_s" in row["fastai"]:
            row["fastai"]["wall_s"] = round(row["fastai"]["wall_s"] + decode_s, 2)
    data.clear()  # free the decoded images before thawline decodes its own

    row["thawline"] = attempt(name, "thawline",
                              lambda: run_thawline(cfg, args.strategy_list, out / "runs" / name, args.resume))
    shutil.rmtree(cache, ignore_errors=True)
    scores = method_scores(row)
    best = max(scores.values(), default=None)
    row["winner"] = [k for k, v in scores.items() if v == best]
    row["best_test_acc"] = best
    return row


def rerun_strategies(task_dir: Path, old: dict, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """A finished task with only `args.rerun`'s strategies trained again (after a change to their recipe): the
    baselines and the other strategies' runs are kept, the compare resumes, so its pick and ties are recomputed.
    The compare's wall time swaps the rerun strategies' old times for their new ones."""
    name, row = old["task"], dict(old)
    before = old["thawline"]["strategies"]
    for strategy in args.rerun_list:
        shutil.rmtree(out / "runs" / name / strategy, ignore_errors=True)
    cache = out / "cache" / name
    cfg = task_config(task_dir, old["img_size"], old["epochs"], old["hflip"], cache)
    result = attempt(name, "thawline", lambda: run_thawline(cfg, old["strategies"], out / "runs" / name, True))
    shutil.rmtree(cache, ignore_errors=True)
    if "error" in result:
        row["thawline"] = result
        return row
    swapped = sum(result["strategies"][s]["wall_time_s"] - before[s]["wall_time_s"] for s in args.rerun_list)
    result["wall_s"] = round(old["thawline"]["wall_s"] + swapped, 2)
    result["rerun"] = args.rerun_list
    row["thawline"] = result
    scores = method_scores(row)
    row["best_test_acc"] = max(scores.values(), default=None)
    row["winner"] = [k for k, v in scores.items() if v == row["best_test_acc"]]
    return row


def attempt(task: str, method: str, fn) -> dict[str, Any]:
    """fn()'s result, logged; a failure is logged and recorded as {"error": ...} so the other tasks still run."""
    try:
        result = fn()
    except (Exception, ThawlineError) as e:
        message = f"{type(e).__name__}: {e}"
        print(f"error: [{task}] {method} failed: {message}", file=sys.stderr, flush=True)
        return {"error": message}
    if method == "thawline":
        log(f"[{task}] thawline pick {result['pick']} test {_pct(result['pick_test_acc'])} ({result['wall_s']:.0f} s)")
    else:
        log(f"[{task}] {method} test {_pct(result['test_acc'])} ({result['wall_s']:.0f} s)")
    return result


def method_scores(row: dict) -> dict[str, float]:
    scores = {}
    for method in ("probe", "fastai"):
        if row.get(method, {}).get("test_acc") is not None:
            scores[method] = row[method]["test_acc"]
    for s, r in row.get("thawline", {}).get("strategies", {}).items():
        if r["test_acc"] is not None:
            scores[s] = r["test_acc"]
    return scores


def _cell(result: dict, key: str = "test_acc") -> str:
    if "error" in result:
        return "error"
    if "skipped" in result:
        return "skipped"
    return _pct(result.get(key))


# ---- the table ----------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _secs(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}"


def add_ties(result: dict) -> dict:
    """Fill each strategy's McNemar tie with the pick from the compare's comparison.json (results written before
    the suite recorded it)."""
    th = result.get("thawline", {})
    path = Path(th.get("out", "")) / "comparison.json"
    if "strategies" not in th or not path.is_file():
        return result
    for row in json.loads(path.read_text()):
        per = th["strategies"].get(row["strategy"])
        if per is not None and "tied_with_pick" not in per:
            per["tied_with_pick"], per["p_vs_pick"] = row.get("tied"), row.get("p_vs_winner")
    return result


def tied_names(th: dict) -> str:
    """The strategies a paired test on test predictions cannot tell from the pick (p >= 0.05), or —."""
    names = [n for n, v in th.get("strategies", {}).items() if v.get("tied_with_pick")]
    return ", ".join(names) or "—"


def table_rows(results: list[dict], strategies: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "probe", "fastai", *strategies, "thawline pick (val)", "tied with pick (test)",
              "winner (test)", "thawline s", "fastai s"]  # fmt: skip
    rows = []
    for r in results:
        fa, th = r.get("fastai", {}), r.get("thawline", {})
        per = th.get("strategies", {})
        pick = f"{th['pick']} {_pct(th['pick_test_acc'])}" if "pick" in th else _cell(th)
        rows.append([
            r["task"], _cell(r.get("probe", {})), _cell(fa),
            *[_cell(th) if "error" in th else _pct(per.get(s, {}).get("test_acc")) for s in strategies],
            pick, tied_names(th), ", ".join(r["winner"]) + f" {_pct(r['best_test_acc'])}" if r["winner"] else "—",
            _secs(th.get("wall_s")), _secs(fa.get("wall_s")),
        ])  # fmt: skip
    return header, rows


def format_console(results: list[dict], strategies: list[str]) -> str:
    header, rows = table_rows(results, strategies)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def summary_lines(results: list[dict]) -> list[str]:
    """The suite's verdicts: thawline against the baselines, head-only against the probe, the time."""
    done = [r for r in results if r.get("thawline", {}).get("strategies") and "test_acc" in r.get("probe", {})]
    if not done:
        return []

    def baseline(r: dict) -> float:
        return max(r["probe"]["test_acc"], r.get("fastai", {}).get("test_acc") or 0.0)

    def best(r: dict) -> float:
        return max(v["test_acc"] for v in r["thawline"]["strategies"].values())

    n = len(done)
    shortfall = [round(100 * (baseline(r) - best(r)), 1) for r in done]
    pick_short = [round(100 * (baseline(r) - r["thawline"]["pick_test_acc"]), 1) for r in done]
    head = [round(100 * (r["thawline"]["strategies"]["head-only"]["test_acc"] - r["probe"]["test_acc"]), 1)
            for r in done if "head-only" in r["thawline"]["strategies"]]  # fmt: skip
    wins: dict[str, int] = {}
    for r in done:
        for w in r["winner"]:
            wins[w] = wins.get(w, 0) + 1
    th_s = sum(r["thawline"]["wall_s"] for r in done)
    fa_s = sum(r.get("fastai", {}).get("wall_s") or 0.0 for r in done)
    return [
        f"Tasks: {n}. thawline's best strategy (test) >= max(probe, fastai) on {sum(x <= 0 for x in shortfall)}/{n} "
        f"(largest shortfall {max(shortfall):.1f} points); thawline's pick (val) on "
        f"{sum(x <= 0 for x in pick_short)}/{n} (largest shortfall {max(pick_short):.1f} points).",
        f"head-only minus the probe, points: min {min(head):+.1f}, per task "
        + ", ".join(f"{x:+.1f}" for x in head) + ".",
        "Best test accuracy (ties counted for each): " + ", ".join(f"{k} {v}" for k, v in sorted(
            wins.items(), key=lambda kv: -kv[1])) + ".",
        f"Wall time: thawline's seven-strategy compares {th_s / 60:.1f} min in all, fastai's one run per task "
        f"{fa_s / 60:.1f} min; per strategy thawline took {th_s / 7 / max(fa_s, 1e-9):.2f}x fastai's time.",
    ]


def format_markdown(results: list[dict], strategies: list[str], meta: dict) -> str:
    header, rows = table_rows(results, strategies)
    lines = [
        "# thawline benchmark suite",
        "",
        f"Test accuracy per task. Model {MODEL} (weights `{WEIGHTS}`), strategies at the same epoch budget as "
        "fastai's fine_tune; probe = logistic regression on frozen pooled features (C by CV on train). "
        "thawline pick = best val accuracy; tied with pick = the strategies McNemar's test on the test predictions "
        "cannot tell from the pick (p >= 0.05); winner = best test accuracy of any column. Wall times in seconds "
        "(thawline: the whole compare; fastai and probe include decoding).",
        "",
        f"Machine: {meta['machine']}; torch {meta['versions']['torch']} with {meta['torch_threads']} threads.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        *summary_lines(results),
        "",
        "| task | kind | classes | train/val/test | img_size | epochs | flips |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.get("counts") or {}
        lines.append(f"| {r['task']} | {r['kind']} | {r['n_classes']} | {c.get('train')}/{c.get('val')}/{c.get('test')}"
                     f" | {r['img_size']} | {r['epochs']} | {'yes' if r['hflip'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: list[dict], strategies: list[str], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "tasks": results}
    tmp = out / "suite_results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out / "suite_results.json")
    (out / "suite_results.md").write_text(format_markdown(results, strategies, meta))


# ---- main -------------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, flush=True)


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("thawline", "torch", "timm", "scikit-learn", "fastai", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=str(HERE / "suite" / "data"), help="the suite folder (built when missing)")
    p.add_argument("--tasks", default="", help="comma-separated task names (default: every task of the suite)")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget for every task (default: the manifest's)")
    p.add_argument("--strategies", default=",".join(ALL_STRATEGIES), help="thawline strategies, comma-separated")
    p.add_argument("--out", default="runs/suite", help="results folder")
    p.add_argument("--resume", action="store_true",
                   help="keep finished tasks of OUT/suite_results.json and finished strategies of a compare")
    p.add_argument("--rerun", default="",
                   help="with --resume: train these strategies of the finished tasks again, keep everything else")
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be at least 1")
    args.strategy_list = [s.strip() for s in args.strategies.split(",") if s.strip()]
    args.rerun_list = [s.strip() for s in args.rerun.split(",") if s.strip()]
    if args.rerun_list and not args.resume:
        p.error("--rerun needs --resume (it changes finished tasks)")
    if not set(args.rerun_list) <= set(args.strategy_list):
        p.error(f"--rerun: {args.rerun} is not among --strategies {args.strategies}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        parse_strategies(args.strategy_list)  # an unknown name fails before any task runs
    except ThawlineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    builder = load_builder()
    data_root, out = Path(args.data), Path(args.out)
    names = [n.strip() for n in args.tasks.split(",") if n.strip()] or list(builder.TASKS)
    unknown = [n for n in names if n not in builder.TASKS and not (data_root / n / "manifest.json").is_file()]
    if unknown:
        print(f"error: unknown task(s) {', '.join(unknown)}; known: {', '.join(builder.TASKS)}", file=sys.stderr)
        return 2
    missing = [n for n in names if not (data_root / n / "manifest.json").is_file()]
    if missing:
        log(f"building {', '.join(missing)} into {data_root}")
        skipped = builder.build_suite(data_root, missing)["skipped"]
        names = [n for n in names if n not in skipped]
    from thawline.training import keep_freed_memory

    keep_freed_memory()  # process-wide (thawline turns it on anyway): the probe and fastai get it too
    meta = {
        "model": MODEL, "weights": WEIGHTS, "strategies": args.strategy_list, "epochs_override": args.epochs,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".replace("  ", " "),
        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "versions": versions(),
    }
    previous: dict[str, dict] = {}
    results_path = out / "suite_results.json"
    if args.resume and results_path.is_file():
        previous = {r["task"]: r for r in json.loads(results_path.read_text()).get("tasks", [])}
    results = []
    for name in names:
        manifest = json.loads((data_root / name / "manifest.json").read_text())
        old = previous.get(name)
        if old and old["strategies"] == args.strategy_list and old["epochs"] == (args.epochs or manifest["epochs"]):
            if args.rerun_list:
                log(f"[{name}] done; training {', '.join(args.rerun_list)} again")
                results.append(rerun_strategies(data_root / name, old, args, out))
                write_results(out, results, args.strategy_list, meta)
            else:
                log(f"[{name}] already done; kept")
                results.append(add_ties(old))
            continue
        log(f"[{name}] {manifest.get('kind')}: {manifest['n_classes']} classes, {manifest['counts']}, "
            f"img_size {manifest['img_size']}, epochs {args.epochs or manifest['epochs']}")
        results.append(run_task(data_root / name, manifest, args, out))
        write_results(out, results, args.strategy_list, meta)
    if not results:
        print("error: no task to run", file=sys.stderr)
        return 1
    write_results(out, results, args.strategy_list, meta)
    log("")
    log(format_console(results, args.strategy_list))
    log(f"\nwritten: {out / 'suite_results.json'}, {out / 'suite_results.md'}")
    failed = [r["task"] for r in results if any("error" in r.get(m, {}) for m in ("probe", "fastai", "thawline"))]
    if failed:
        print(f"error: something failed in {', '.join(failed)} (see above and suite_results.json)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
