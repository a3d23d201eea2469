"""The cross-validated answer against the plain compare on tasks of the benchmark suite (benchmarks/suite/build.py).

    python benchmarks/crossval_suite.py --data /tmp/suite --tasks count-shapes,digits --out runs/cv-suite

Per task, back to back in this process, on the task's train/val/test folders with the suite's settings
(tf_efficientnet_lite0, embedded weights, the task's img_size, epochs and flips, batch 32):
(1) the plain compare of all seven strategies: each strategy's test accuracy, the pick by val accuracy, wall time;
(2) `compare --folds K --race` (K = 5 unless given): its pick (best out-of-fold accuracy), its answer (ensemble or
    strategy) and that answer's test accuracy, the finalists' fold-averaged members' test accuracies, wall time.
Regret of a pick = the best plain test accuracy of any strategy minus the picked strategy's plain test accuracy: how
much choosing cost, measured on the same trained runs for both picks. The best fixed rule ("always answer s") is
chosen leave-one-task-out on the tasks run: for each task, s minimises the mean regret on the others.
Results: OUT/crossval_suite.json (rewritten after every task) with machine, date, command and load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import thawline

MODEL, WEIGHTS, BATCH = "tf_efficientnet_lite0", "default", 32
STRATEGIES = ("head-only", "two-phase", "layer-wise", "partial", "gradual", "full", "scratch")


def task_config(task_dir: Path, manifest: dict[str, Any], cache: Path) -> Any:
    return thawline.make_config(data=str(task_dir), model=MODEL, weights=WEIGHTS, img_size=manifest["img_size"],
                                epochs=manifest["epochs"], batch_size=BATCH, hflip=bool(manifest.get("hflip", True)),
                                cache_dir=str(cache))  # fmt: skip


def run_task(task_dir: Path, out: Path, folds: int, race: bool) -> dict[str, Any]:
    manifest = json.loads((task_dir / "manifest.json").read_text())
    row: dict[str, Any] = {"task": manifest["task"], "counts": manifest.get("counts"), "epochs": manifest["epochs"],
                           "img_size": manifest["img_size"], "load_before": os.getloadavg(),
                           "date": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    cache = out / "cache" / manifest["task"]
    shutil.rmtree(cache, ignore_errors=True)
    cfg = task_config(task_dir, manifest, cache)
    started = time.perf_counter()
    plain = thawline.compare(cfg, list(STRATEGIES), out / "runs" / manifest["task"] / "plain", quiet=True)
    row["plain_wall_s"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(cache, ignore_errors=True)  # each compare pays for its own decoding and feature passes
    started = time.perf_counter()
    cv = thawline.compare(cfg, list(STRATEGIES), out / "runs" / manifest["task"] / "folds", quiet=True, folds=folds,
                          race=race)  # fmt: skip
    row["folds_wall_s"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(cache, ignore_errors=True)
    score(row, plain, cv)
    row["cost_ratio"] = round(row["folds_wall_s"] / row["plain_wall_s"], 2)
    row["load_after"] = os.getloadavg()
    return row


def score(row: dict[str, Any], plain: Any, cv: Any) -> None:
    """The row's accuracies, picks and regrets from the two compares' results."""
    test = {r["strategy"]: r["test_acc"] for r in plain.rows}
    row["plain_test"] = test
    row["plain_pick"] = plain.winner
    row["folds_pick"] = cv.winner
    row["answer"] = {k: v for k, v in (cv.answer or {}).items() if k != "runs"}
    row["members_test"] = {r["strategy"]: r.get("test_acc") for r in cv.rows}
    row["stopped"] = sorted(set(STRATEGIES) - {r["strategy"] for r in cv.rows})
    best = max(test.values())
    row["best_plain_test"] = best
    row["regret_plain_pick"] = round(best - test[plain.winner], 6)
    row["regret_folds_pick"] = round(best - test[cv.winner], 6)
    # the other pick rule the docs weigh: the out-of-fold leader itself, ties or not
    row["folds_leader"] = cv.rows[0]["strategy"]
    row["regret_folds_leader"] = round(best - test[row["folds_leader"]], 6)


def rescore_task(task_dir: Path, out: Path, folds: int, race: bool, row: dict[str, Any]) -> dict[str, Any]:
    """A task already run, its picks and answer recomputed by this code from its run folders: both compares resumed,
    so nothing trains (every run is finished) and the wall times stay those measured."""
    manifest = json.loads((task_dir / "manifest.json").read_text())
    cache = out / "cache" / manifest["task"]
    cfg = task_config(task_dir, manifest, cache)
    runs = out / "runs" / manifest["task"]
    plain = thawline.compare(cfg, list(STRATEGIES), runs / "plain", quiet=True, resume=True)
    cv = thawline.compare(cfg, list(STRATEGIES), runs / "folds", quiet=True, folds=folds, race=race, resume=True)
    shutil.rmtree(cache, ignore_errors=True)
    score(row, plain, cv)
    row["rescored"] = datetime.datetime.now().isoformat(timespec="seconds")
    return row


def fixed_rule_loo(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each task: the constant strategy with the least mean regret on the other tasks, and its regret here."""
    out = []
    for i, row in enumerate(rows):
        others = [r for j, r in enumerate(rows) if j != i] or [row]
        rule = min(STRATEGIES, key=lambda s: sum(r["best_plain_test"] - r["plain_test"][s] for r in others))
        out.append({"task": row["task"], "rule": rule,
                    "regret": round(row["best_plain_test"] - row["plain_test"][rule], 6)})  # fmt: skip
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(xs: list[float]) -> float:
        return round(sum(xs) / len(xs), 4) if xs else float("nan")

    loo = fixed_rule_loo(rows)
    answer_vs_best = [r["answer"].get("test_acc", 0) - r["best_plain_test"] for r in rows]
    answer_vs_member = [r["answer"].get("test_acc", 0) - max(v for v in r["members_test"].values() if v is not None)
                        for r in rows]  # fmt: skip
    return {
        "tasks": len(rows),
        "regret_plain_pick": {"mean": mean([r["regret_plain_pick"] for r in rows]),
                              "max": max(r["regret_plain_pick"] for r in rows)},
        "regret_folds_pick": {"mean": mean([r["regret_folds_pick"] for r in rows]),
                              "max": max(r["regret_folds_pick"] for r in rows)},
        **({"regret_folds_leader": {"mean": mean([r["regret_folds_leader"] for r in rows]),
                                    "max": max(r["regret_folds_leader"] for r in rows)}}
           if all("regret_folds_leader" in r for r in rows) else {}),
        "fixed_rule_loo": {"mean": mean([x["regret"] for x in loo]), "max": max(x["regret"] for x in loo),
                           "per_task": loo},
        "answer_minus_best_plain_strategy": {"mean": mean(answer_vs_best),
                                             "at_least_equal": sum(d >= 0 for d in answer_vs_best)},
        "answer_minus_best_member": {"mean": mean(answer_vs_member),
                                     "at_least_equal": sum(d >= 0 for d in answer_vs_member)},
        # a task whose timing was disturbed (`cost_note`: e.g. the process was paused) is left out of the cost
        "cost_ratio": {"mean": mean([r["cost_ratio"] for r in rows if not r.get("cost_note")]),
                       "each": [r["cost_ratio"] for r in rows]},
    }  # fmt: skip


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}"


def export_record(results: Path, record: Path) -> None:
    """The results file as a docs table record (docs/gen_tables.py): one row a task, then the means."""
    doc = json.loads(results.read_text())
    meta, rows = doc["meta"], doc["tasks"]
    loads = [f"{r['task']} {r['load_before'][0]:.1f}/{r['load_after'][0]:.1f}" for r in rows]
    table = [[r["task"], f"{r['plain_pick']} ({pct(r['regret_plain_pick'])})",
              f"{r['folds_pick']} ({pct(r['regret_folds_pick'])})", pct(r["best_plain_test"]),
              f"{r['answer']['kind']}: " + " + ".join(f"{n} {w:.2f}" for n, w in r["answer"]["members"].items()),
              pct(r["answer"].get("test_acc")), ", ".join(r["stopped"]) or "—",
              f"{r['plain_wall_s']:.0f} / {r['folds_wall_s']:.0f} ({r['cost_ratio']:.2f}x)"
              + (f"; {r['cost_note']}" if r.get("cost_note") else "")] for r in rows]  # fmt: skip
    s = summary(rows)
    table.append(["**mean**", f"regret {pct(s['regret_plain_pick']['mean'])}",
                  f"regret {pct(s['regret_folds_pick']['mean'])}", "", "",
                  f"{s['answer_minus_best_plain_strategy']['mean'] * 100:+.1f} vs best plain", "",
                  f"{s['cost_ratio']['mean']:.2f}x"])  # fmt: skip
    out = {
        "format": 1, "kind": "table",
        "title": f"compare --folds {meta['folds']}{' --race' if meta['race'] else ''} against the plain compare "
                 "(test accuracy, %; regret = best plain strategy's test accuracy minus the picked one's)",
        "machine": meta["machine"], "date": meta["date"], "command": meta["command"],
        "load": "1-minute load average before/after each task: " + "; ".join(loads),
        "columns": ["task", "plain pick (regret)", "folds pick (regret)", "best plain strategy", "answer",
                    "answer test", "stopped by the race", "wall s plain / folds"],
        "rows": table,
        "caption": ((f"The out-of-fold leader itself (ties or not) as the pick: regret "
                     f"{pct(s['regret_folds_leader']['mean'])} mean, {pct(s['regret_folds_leader']['max'])} max. "
                     if "regret_folds_leader" in s else "")
                    + f"Fixed rule chosen leave-one-task-out on these tasks: regret {pct(s['fixed_rule_loo']['mean'])} "
                    f"mean, {pct(s['fixed_rule_loo']['max'])} max. The answer's test accuracy is at least the best "
                    f"plain strategy's on {s['answer_minus_best_plain_strategy']['at_least_equal']} of {len(rows)} "
                    f"tasks and at least the best fold-averaged finalist's on "
                    f"{s['answer_minus_best_member']['at_least_equal']} of {len(rows)}."),
    }  # fmt: skip
    record.write_text(json.dumps(out, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", nargs=2, metavar=("RESULTS", "RECORD"),
                   help="write RESULTS (a crossval_suite.json) as a docs table record RECORD, run nothing")  # fmt: skip
    p.add_argument("--data", help="the suite folder (benchmarks/suite/build.py --out DIR)")
    p.add_argument("--tasks", help="comma-separated task names")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--no-race", dest="race", action="store_false")
    p.add_argument("--out", default="runs/crossval-suite")
    p.add_argument("--rescore", action="store_true",
                   help="recompute the picks and answers of the tasks already in OUT's results from their run "
                        "folders with this code (resumed compares: nothing trains, wall times kept)")  # fmt: skip
    args = p.parse_args(argv)
    if args.export:
        export_record(Path(args.export[0]), Path(args.export[1]))
        return 0
    if not args.data or not args.tasks:
        p.error("--data and --tasks are needed to run (or --export RESULTS RECORD)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "folds": args.folds, "race": args.race,
            "model": MODEL, "thawline": thawline.__version__ if hasattr(thawline, "__version__") else None}  # fmt: skip
    results = out / "crossval_suite.json"
    # Resumable task by task: rows already in OUT's results stay unless their task is run again.
    rows: list[dict[str, Any]] = json.loads(results.read_text())["tasks"] if results.exists() else []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        done = next((r for r in rows if r["task"] == task), None)
        rows = [r for r in rows if r["task"] != task]
        if args.rescore and done is not None:
            rows.append(rescore_task(Path(args.data) / task, out, args.folds, args.race, done))
        else:
            rows.append(run_task(Path(args.data) / task, out, args.folds, args.race))
        r = rows[-1]
        print(f"[{task}] plain pick {r['plain_pick']} (regret {r['regret_plain_pick']:.3f}), folds pick "
              f"{r['folds_pick']} (regret {r['regret_folds_pick']:.3f}); answer {r['answer'].get('kind')} test "
              f"{r['answer'].get('test_acc')} vs best plain {r['best_plain_test']}; cost {r['cost_ratio']}x")
        doc = {"meta": meta, "tasks": rows, "summary": summary(rows)}
        tmp = results.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(results)
    print(json.dumps(summary(rows), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
