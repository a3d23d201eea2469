"""How good are the shortcuts? `thawline advise` and `compare --halving` against the full compare, task by task.

    python benchmarks/suite.py                      # first: the full compares (OUT/suite_results.json)
    python benchmarks/advise_suite.py               # then: advise and halving on every task that finished there
    python benchmarks/advise_suite.py --tasks digits,faces --no-halving

For every task of the suite whose full thawline compare finished (read from SUITE/suite_results.json, written by
`benchmarks/suite.py`), in this one process and back to back:

(a) `thawline.advise` on the task with the compare's own options (model, img_size, flips, batch), a fresh cache:
    its predicted ranking of the strategies the compare ran, and its wall time;
(b) unless --no-halving, `thawline.compare(..., halving=True)` with the same options and strategies, a fresh cache:
    the winner it names (best val accuracy among the last survivors), that run's test accuracy and the wall time.

The measured ranking is the full compare's test accuracy (the truth the user wants; val picks are reported too).
Per task: Kendall's tau-b between advise's ranking and the measured one (ties in the measured accuracies count as
ties), whether advise's top pick is within 1 point of the best test accuracy, advise's time as a share of the full
compare's wall time, and halving's winner's gap to the full compare's best test accuracy and its time share.
Over the suite: the mean tau, and the same for the best *fixed* ranking chosen leave-one-task-out (for each task, the
one order of the strategies with the highest mean tau over the other tasks, scored on the held-out task): a
predictor is only useful if it beats the ranking you could have written down without looking at the data.

Results: OUT/advise_suite.json and OUT/advise_suite.md (rewritten after every task; --resume keeps finished tasks).
`--export FILE` also writes what scoring reads (measurements, per-epoch val accuracy and seconds, per-image test
correctness, advise's signals) into one small file; `--records FILE` rescores from it alone (benchmarks/records/
holds the latest suite's).
Wall times are only comparable with the suite's when both ran on a quiet machine; the load average is recorded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import thawline
from thawline.comparing import first_epochs, halving_floor, read_curves, simulate_halving
from thawline.report import kendall_tau_b, oracle_tau

HERE = Path(__file__).resolve().parent


def best_fixed_ranking(measured: list[dict[str, float]], strategies: list[str]) -> tuple[list[str], float]:
    """The one order of `strategies` with the highest mean tau over these tasks' measured scores."""
    best, best_tau = list(strategies), -2.0
    for order in itertools.permutations(strategies):
        tau = float(np.mean([kendall_tau_b(list(order), m) for m in measured]))
        if tau > best_tau:
            best, best_tau = list(order), tau
    return best, best_tau


def leave_one_out_fixed(measured: dict[str, dict[str, float]], strategies: list[str]) -> dict[str, dict[str, Any]]:
    """Per task: the best fixed ranking fitted on the other tasks, and its tau on this one."""
    out = {}
    for task, scores in measured.items():
        others = [m for t, m in measured.items() if t != task]
        if not others:
            continue
        order, _ = best_fixed_ranking(others, strategies)
        out[task] = {"ranking": order, "tau": kendall_tau_b(order, scores)}
    return out


def top_gap_points(top: str, test: dict[str, float]) -> float:
    """How many points `top`'s test accuracy is below the best one."""
    return round(100 * (max(test.values()) - test[top]), 2)


def task_curves(row: dict, strategies: list[str]) -> dict[str, list[dict[str, Any]]] | None:
    """A suite task's per-epoch curves: embedded in a records file (`--export`), else read from its run folders."""
    runs = row["thawline"]["strategies"]
    if all("epochs" in runs[n] for n in strategies):
        return first_epochs({n: runs[n]["epochs"] for n in strategies}, row["epochs"])
    return read_curves(Path(row["thawline"]["out"]), strategies, row["epochs"])


def task_test_correct(row: dict, strategies: list[str]) -> dict[str, np.ndarray] | None:
    """Each strategy's per-image test correctness (0/1, the test images in path order, the same for all): embedded
    in a records file (`--export`, packed bits), else read from the run folders' predictions.csv; None when missing."""
    runs = row["thawline"]["strategies"]
    if all("test_correct" in runs[n] for n in strategies):
        n_test = int(row["counts"]["test"])
        return {n: np.unpackbits(np.frombuffer(bytes.fromhex(runs[n]["test_correct"]), np.uint8))[:n_test]
                for n in strategies}  # fmt: skip
    from thawline.report import read_predictions

    out = {}
    for n in strategies:
        path = Path(row["thawline"]["out"]) / n.replace("/", "_") / "predictions.csv"
        if not path.is_file():
            return None
        pred = read_predictions(path)
        correct = pred.correct[np.argsort(pred.paths, kind="stable")].astype(np.uint8)
        if pred.split != "test" or abs(correct.mean() - float(runs[n]["test_acc"])) > 1e-3:
            return None  # not the test predictions the recorded accuracy came from
        out[n] = correct
    return out


def task_config(task_dir: Path, manifest: dict, epochs: int, cache: Path):
    return load_suite().task_config(task_dir, manifest["img_size"], epochs, bool(manifest.get("hflip", True)), cache)


def load_suite():
    import importlib.util

    spec = importlib.util.spec_from_file_location("thawline_suite", HERE / "suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_task(row: dict, data_root: Path, out: Path, halving: bool) -> dict[str, Any]:
    name = row["task"]
    manifest = json.loads((data_root / name / "manifest.json").read_text())
    strategies = [s for s in row["strategies"] if s in row["thawline"]["strategies"]]
    full_wall = float(row["thawline"]["wall_s"])
    result: dict[str, Any] = {"task": name, "full_compare_s": full_wall, "load_before": os.getloadavg()[0]}
    cache = out / "cache" / name
    shutil.rmtree(cache, ignore_errors=True)
    cfg = task_config(data_root / name, manifest, row["epochs"], cache)
    started = time.perf_counter()
    thawline.advise(cfg, out / "advise" / name, quiet=True)
    advise_s = time.perf_counter() - started
    result["advise"] = {"seconds": round(advise_s, 2), "share_of_full": round(advise_s / full_wall, 4),
                        "json": str(out / "advise" / name / "advise.json")}  # fmt: skip
    shutil.rmtree(cache, ignore_errors=True)
    if halving:
        folder = out / "halving" / name
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        run = thawline.compare(cfg, strategies, out=folder, halving=True, quiet=True)
        halving_s = time.perf_counter() - started
        win_row = next(r for r in run.rows if r["strategy"] == run.winner)
        result["halving"] = {
            "winner": run.winner,
            "test_acc": win_row.get("test_acc"),
            "seconds": round(halving_s, 2),
            "share_of_full": round(halving_s / full_wall, 4),
        }
        shutil.rmtree(cache, ignore_errors=True)
    result["load_after"] = os.getloadavg()[0]
    return score_task(row, result)


def score_task(row: dict, result: dict[str, Any]) -> dict[str, Any]:
    """Fill `result` with everything computed from the suite's measured runs and advise's recorded signals (no
    training, no advise pass): advise's ranking by the current rules and prior, its tau and top pick, halving
    replayed. `--rescore` calls it alone after a strategy's recipe changed or the rules did."""
    from thawline.comparing import far_behind, halving_carried, rank_strategies, signals_from_doc

    runs = row["thawline"]["strategies"]
    strategies = [s for s in row["strategies"] if s in runs]
    test = {s: float(runs[s]["test_acc"]) for s in strategies}
    result.update(strategies=strategies, measured_test=test, full_pick=row["thawline"]["pick"])
    if all("best_val_acc" in runs[s] for s in strategies):  # the ceiling: the trained runs' own val ranking
        val = {s: float(runs[s]["best_val_acc"]) for s in strategies}
        result["val_ranking_tau"] = round(kendall_tau_b(sorted(strategies, key=lambda s: -val[s]), test), 4)
    correct = task_test_correct(row, strategies)
    if correct is not None:  # the noise ceiling: what knowing the true ranking would score on this test set
        result["oracle_tau"] = round(oracle_tau(correct), 4)
    ranked = rank_strategies(signals_from_doc(advice_doc(result)))[0]
    ranking = [r["strategy"] for r in ranked if r["strategy"] in test]
    result["advise"].update(ranking=ranking, tau=round(kendall_tau_b(ranking, test), 4), top=ranking[0],
                            top_gap_points=top_gap_points(ranking[0], test))  # fmt: skip
    curves = task_curves(row, strategies)
    if curves is not None:
        carried = halving_carried(strategies, Path(row["thawline"]["out"]))
        sim = simulate_halving(curves, row["epochs"], carried)
        sim["test_acc"] = test[sim["winner"]]
        sim["gap_points"] = top_gap_points(sim["winner"], test)
        sim["gap_to_pick_points"] = round(100 * (test[result["full_pick"]] - test[sim["winner"]]), 2)
        sim.update(halving_floor(curves, result["full_pick"], carried))
        result["halving_replayed"] = sim
        left_out = far_behind(ranked, strategies)  # what `compare --advise --halving` would not train
        if left_out:
            top = next(n for n in ranking if n not in left_out)  # with --advise the advisor's top pick is carried
            adv = simulate_halving(curves, row["epochs"], top, left_out)
            adv["test_acc"] = test[adv["winner"]]
            adv["gap_to_pick_points"] = round(100 * (test[result["full_pick"]] - test[adv["winner"]]), 2)
            result["halving_replayed_advise"] = adv
    if "halving" in result:  # a real halving run's winner, scored against the current measurements
        h = result["halving"]
        h["gap_points"] = top_gap_points(h["winner"], test)
        h["gap_to_pick_points"] = round(100 * (test[result["full_pick"]] - float(h["test_acc"])), 2)
    return result


def advice_doc(result: dict[str, Any]) -> dict[str, Any]:
    """A task's advise.json: embedded in a records file (`--export`), else read from where advise wrote it."""
    return result["advise"].get("doc") or json.loads(Path(result["advise"]["json"]).read_text())


def has_advice(result: dict[str, Any]) -> bool:
    return "doc" in result["advise"] or Path(result["advise"].get("json", "")).is_file()


def advise_with_prior(
    doc: dict[str, Any],
    order: list[str],
    test: dict[str, float],
    rules: tuple | None = None,
    weight: float | None = None,
) -> dict[str, Any]:
    """advise's rules (all, or `rules`) on the task's recorded signals, started from a prior in `order` (the fixed
    ranking fitted on the other tasks) instead of the shipped one: do the rules add anything to it?"""
    from thawline.comparing import (
        PRIOR,
        RULE_WEIGHT,
        RULES,
        STRATEGY_ORDER,
        rank_strategies,
        signals_from_doc,
    )

    everything = [*order, *(s for s in STRATEGY_ORDER if s not in order)]  # strategies the task did not run: last
    prior = dict(zip(everything, sorted(PRIOR.values(), reverse=True), strict=True))
    sig = signals_from_doc(doc)
    rules, weight = RULES if rules is None else rules, RULE_WEIGHT if weight is None else weight
    rows, _, _ = rank_strategies(sig, prior, rules, weight)
    ranking = [r["strategy"] for r in rows if r["strategy"] in test]
    return {"ranking": ranking, "tau": round(kendall_tau_b(ranking, test), 4), "top": ranking[0],
            "top_gap_points": top_gap_points(ranking[0], test)}  # fmt: skip


def summarise(results: list[dict]) -> dict[str, Any]:
    measured = {r["task"]: r["measured_test"] for r in results}
    strategies = results[0]["strategies"] if results else []
    fixed = leave_one_out_fixed(measured, strategies) if len(results) > 1 else {}
    for r in results:
        if r["task"] in fixed:
            r["fixed_loo"] = fixed[r["task"]]
            if has_advice(r) and set(strategies) == set(fixed[r["task"]]["ranking"]):
                r["advise_loo_prior"] = advise_with_prior(advice_doc(r), fixed[r["task"]]["ranking"],
                                                          r["measured_test"])  # fmt: skip
    taus = [r["advise"]["tau"] for r in results]
    summary: dict[str, Any] = {
        "tasks": len(results),
        "mean_tau_advise": round(float(np.mean(taus)), 4) if taus else None,
        "mean_tau_fixed_loo": round(float(np.mean([f["tau"] for f in fixed.values()])), 4) if fixed else None,
        "top_within_1pt": sum(r["advise"]["top_gap_points"] <= 1.0 for r in results),
        "fixed_loo_top_within_1pt": sum(
            top_gap_points(f["ranking"][0], r["measured_test"]) <= 1.0 for r in results if (f := r.get("fixed_loo"))
        ),
        "advise_max_share": max((r["advise"]["share_of_full"] for r in results), default=None),
    }
    val_taus = [r["val_ranking_tau"] for r in results if "val_ranking_tau" in r]
    if val_taus:  # how well the full compare's own val accuracies rank its test accuracies: no predictor does better
        summary["mean_tau_val_ranking"] = round(float(np.mean(val_taus)), 4)
    oracle = [r["oracle_tau"] for r in results if "oracle_tau" in r]
    if oracle:
        summary["mean_tau_oracle"] = round(float(np.mean(oracle)), 4)
        summary["oracle_tasks"] = len(oracle)
    replayed = [r for r in results if "halving_replayed" in r]
    if replayed:
        summary["replayed_within_0_5pt"] = sum(r["halving_replayed"]["gap_points"] <= 0.5 for r in replayed)
        summary["replayed_within_0_5pt_of_pick"] = sum(r["halving_replayed"]["gap_to_pick_points"] <= 0.5
                                                       for r in replayed)  # fmt: skip
        # the ceiling for halving's pick by val: how often the full compare's own pick is within 0.5 of the best
        summary["full_pick_within_0_5pt"] = sum(top_gap_points(r["full_pick"], r["measured_test"]) <= 0.5
                                                for r in replayed)  # fmt: skip
        summary["replayed_tasks"] = len(replayed)
        shares = [r["halving_replayed"]["epoch_share"] for r in replayed]
        summary["replayed_mean_epoch_share"] = round(float(np.mean(shares)), 4)
        summary["replayed_max_epoch_share"] = round(float(np.max(shares)), 4)
        floors = {r["task"]: r["halving_replayed"]["floor_share"] for r in replayed}
        summary["replayed_floor_over_40pct"] = {t: f for t, f in floors.items() if f > 0.40}
        pairs = [
            (r["halving_replayed"], r["halving_replayed_advise"]) for r in replayed if "halving_replayed_advise" in r
        ]
        advised = [a for _, a in pairs]
        if advised:
            summary["replayed_advise_tasks"] = len(advised)
            summary["replayed_advise_same_winner"] = sum(plain["winner"] == a["winner"] for plain, a in pairs)
            summary["replayed_advise_mean_epoch_share"] = round(float(np.mean([a["epoch_share"] for a in advised])), 4)
            summary["replayed_advise_max_epoch_share"] = round(float(np.max([a["epoch_share"] for a in advised])), 4)
        summary["replayed_matches_run"] = sum(r["halving_replayed"]["winner"] == r["halving"]["winner"]
                                              for r in replayed if "halving" in r)  # fmt: skip
    with_prior = [r["advise_loo_prior"] for r in results if "advise_loo_prior" in r]
    if with_prior:
        summary["mean_tau_advise_loo_prior"] = round(float(np.mean([a["tau"] for a in with_prior])), 4)
        summary["advise_loo_prior_top_within_1pt"] = sum(a["top_gap_points"] <= 1.0 for a in with_prior)
    summary["rule_ablation"] = rule_ablation(results)
    halved = [r for r in results if "halving" in r]
    if halved:
        summary["halving_within_0_5pt"] = sum(r["halving"]["gap_points"] <= 0.5 for r in halved)
        summary["halving_tasks"] = len(halved)
        summary["halving_mean_share"] = round(float(np.mean([r["halving"]["share_of_full"] for r in halved])), 4)
    return summary


def rule_ablation(results: list[dict]) -> dict[str, dict[str, float]]:
    """Which of advise's rule sets earn their place: each one left out in turn (and all of them), the rest applied
    to the recorded signals from the fixed ranking fitted on the other tasks; mean tau and top picks within 1 point.
    A rule set whose removal raises the tau carries no information beyond the fixed order on this suite."""
    from thawline.comparing import RULES

    scored = [r for r in results if "advise_loo_prior" in r]
    if not scored:
        return {}
    variants: dict[str, tuple[tuple, float]] = {"all rules": (RULES, 1.0), "no rules": ((), 1.0)}
    variants |= {f"without {fn.__name__.removeprefix('_rules_')}": (tuple(x for x in RULES if x is not fn), 1.0)
                 for fn in RULES}  # fmt: skip
    variants |= {f"all rules x{w:g}": (RULES, w) for w in (0.5, 0.25, 0.1)}  # rules as tie-breakers
    out = {}
    for name, (rules, weight) in variants.items():
        runs = [advise_with_prior(advice_doc(r), r["fixed_loo"]["ranking"], r["measured_test"], rules, weight)
                for r in scored]  # fmt: skip
        out[name] = {"mean_tau": round(float(np.mean([a["tau"] for a in runs])), 4),
                     "top_within_1pt": sum(a["top_gap_points"] <= 1.0 for a in runs), "tasks": len(runs)}  # fmt: skip
    return out


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def format_markdown(results: list[dict], summary: dict) -> str:
    lines = [
        "| task | measured best (test) | advise top | τ advise | τ fixed (LOO) | advise s | share | "
        "halving winner | gap pts | halving s | share | replayed winner | gap pts | epoch share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        best = max(r["measured_test"], key=r["measured_test"].get)
        a, h, f = r["advise"], r.get("halving"), r.get("fixed_loo")
        fixed_tau = f"{f['tau']:+.2f}" if f else "—"
        lines.append(
            f"| {r['task']} | {best} {pct(r['measured_test'][best])} | {a['top']} "
            f"{pct(r['measured_test'][a['top']])} | {a['tau']:+.2f} | {fixed_tau} | "
            f"{a['seconds']:.0f} | {100 * a['share_of_full']:.1f}% | "
            + (f"{h['winner']} {pct(h['test_acc'])} | {h['gap_points']:.1f} | {h['seconds']:.0f} | "
               f"{100 * h['share_of_full']:.0f}% |" if h else "— | — | — | — |")
            + (f" {x['winner']} {pct(x['test_acc'])} | {x['gap_points']:.1f} | {100 * x['epoch_share']:.0f}% |"
               if (x := r.get("halving_replayed")) else " — | — | — |")
        )  # fmt: skip
    s = summary
    lines += [
        "",
        f"Tasks: {s['tasks']}. Mean Kendall τ: advise {s['mean_tau_advise']}, best fixed ranking (leave-one-task-out) "
        f"{s['mean_tau_fixed_loo']}. Advise's top pick within 1 point of the best: {s['top_within_1pt']}/{s['tasks']}."
        f" Advise's largest share of the full compare's wall time: {pct(s['advise_max_share'])}.",
    ]
    if "mean_tau_val_ranking" in s:
        lines.append(
            f"The full compare's own ranking by best val accuracy against its test ranking: mean τ "
            f"{s['mean_tau_val_ranking']} (the same trained runs judged on other images: a practical ceiling for a "
            "prediction made before training)."
        )
    if "mean_tau_oracle" in s:
        lines.append(
            f"Knowing each task's true ranking would score mean τ {s['mean_tau_oracle']} against these test sets "
            f"({s['oracle_tasks']} tasks; the measured test ranking as the truth, 1,000 bootstrap resamples of the "
            "test images as remeasurements: an upper bound, the noise of test sets this size)."
        )
    if "mean_tau_advise_loo_prior" in s:
        lines.append(
            "(The shipped prior is the fixed ranking fitted on this suite, so the line above is in-sample for it; the "
            "next line is the fair estimate.) "
            f"advise's rules started from the fixed ranking fitted on the other tasks (instead of the shipped prior): "
            f"mean τ {s['mean_tau_advise_loo_prior']}, top pick within 1 point on "
            f"{s['advise_loo_prior_top_within_1pt']}/{s['tasks']}; the fixed ranking (LOO) alone: top pick within 1 "
            f"point on {s['fixed_loo_top_within_1pt']}/{s['tasks']}."
        )
    if s.get("rule_ablation"):
        lines.append(
            "Rule sets left out (from the LOO fixed ranking; mean τ, top pick within 1 point): "
            + "; ".join(f"{k} {v['mean_tau']:+.2f}, {v['top_within_1pt']}/{v['tasks']}"
                        for k, v in s["rule_ablation"].items()) + "."
        )  # fmt: skip
    if "replayed_tasks" in s:
        lines.append(
            f"Halving replayed from the full compare's epochs (exact winner; time share from the epochs' seconds): "
            f"winner within 0.5 points of the best on {s['replayed_within_0_5pt']}/{s['replayed_tasks']} (the full "
            f"compare's own pick by val: {s['full_pick_within_0_5pt']}/{s['replayed_tasks']}), of the full compare's "
            f"pick on {s['replayed_within_0_5pt_of_pick']}/{s['replayed_tasks']}; mean "
            f"{pct(s['replayed_mean_epoch_share'])} (largest {pct(s['replayed_max_epoch_share'])}) of the "
            "strategy-epochs' time"
            + (f"; the replay named the real run's winner on {s['replayed_matches_run']}/{s['halving_tasks']} of the "
               "tasks where halving ran." if "halving_tasks" in s else ".")
        )  # fmt: skip
    if "replayed_floor_over_40pct" in s:
        over = s["replayed_floor_over_40pct"]
        lines.append(
            "The floor (the full compare's pick and the carried strategy trained to the end, every other strategy "
            "stopped after its first epoch: no race with whole-epoch rungs spends less and still names the pick): "
            + (", ".join(f"{t} {pct(f)}" for t, f in over.items()) + " above 40%." if over
               else "at most 40% on every task.")
        )  # fmt: skip
    if "replayed_advise_tasks" in s:
        lines.append(
            f"With `--advise` (the strategies it ranks far behind left out before the race, counted as entrants), "
            f"replayed on {s['replayed_advise_tasks']} tasks where it leaves one out: the same winner as plain halving "
            f"on {s['replayed_advise_same_winner']}, mean {pct(s['replayed_advise_mean_epoch_share'])} (largest "
            f"{pct(s['replayed_advise_max_epoch_share'])}) of the full compare's strategy-epochs' time."
        )
    if "halving_tasks" in s:
        lines.append(
            f"Halving's winner within 0.5 points of the best: {s['halving_within_0_5pt']}/{s['halving_tasks']}; "
            f"mean wall time {pct(s['halving_mean_share'])} of the full compare's."
        )
    return "\n".join(lines) + "\n"


EPOCH_KEYS = ("epoch", "val_acc", "seconds")  # what the halving replay reads of an epoch


def export_records(rows: list[dict], results: list[dict], path: Path) -> None:
    """One JSON file with what `--rescore` and the halving replay read (the suite's measurements with each
    strategy's per-epoch val accuracy and seconds and per-image test correctness, and every task's advise.json),
    small enough to commit: a later change to the rules, the prior or halving is scored with `--records FILE`,
    without the run folders."""
    suite = []
    for row in rows:
        row = json.loads(json.dumps(row))  # a copy
        runs = row["thawline"]["strategies"]
        strategies = [s for s in row["strategies"] if s in runs]
        curves = task_curves(row, strategies) or {}
        for name, epochs in curves.items():
            runs[name]["epochs"] = [{k: r[k] for k in EPOCH_KEYS if k in r} for r in epochs]
        for name, correct in (task_test_correct(row, strategies) or {}).items():  # packed: 1 bit per test image
            runs[name]["test_correct"] = np.packbits(correct).tobytes().hex()
        suite.append(row)
    recorded = [{**r, "advise": {**r["advise"], "doc": advice_doc(r)}} for r in results if has_advice(r)]
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": 1, "recorded": recording_context(), "suite": suite, "advise": recorded}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def recording_context() -> dict[str, Any]:
    """Where, when and how a records file was written (docs/gen_tables.py prints it above the tables): the machine,
    the date, the command line and the load average at export time (the measurements' own loads are per task)."""
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = models[0] if models else cpu
    return {
        "machine": f"{cpu}, {os.cpu_count()} CPUs, {platform.system()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
        "load": f"{load[0]:.2f} at export" if load else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="runs/suite", help="benchmarks/suite.py's OUT folder (suite_results.json)")
    p.add_argument("--data", default=str(HERE / "suite" / "data"), help="the suite's task folders")
    p.add_argument("--tasks", default="", help="comma-separated task names (default: every finished task)")
    p.add_argument("--no-halving", action="store_true", help="advise only (seconds per task)")
    p.add_argument("--out", default=None, help="results folder (default SUITE)")
    p.add_argument("--resume", action="store_true", help="keep the tasks OUT/advise_suite.json already holds")
    p.add_argument("--rescore", action="store_true",
                   help="no advise or halving run: re-rank OUT/advise_suite.json's recorded signals with the current "
                        "rules and prior, against the suite's current measurements")  # fmt: skip
    p.add_argument(
        "--export",
        default=None,
        metavar="FILE",
        help="also write the measurements and advise's signals into FILE (small; commit it)",
    )
    p.add_argument(
        "--records",
        default=None,
        metavar="FILE",
        help="rescore from an --export FILE instead of SUITE's files and run folders (implies --rescore)",
    )
    args = p.parse_args(argv)
    suite_dir, data_root = Path(args.suite), Path(args.data)
    out = Path(args.out) if args.out else suite_dir
    results_path = Path(args.records) if args.records else suite_dir / "suite_results.json"
    if not results_path.is_file():
        print(f"error: {results_path} not found; run benchmarks/suite.py first", file=sys.stderr)
        return 2
    loaded = json.loads(results_path.read_text())
    records = loaded if args.records else None
    suite_rows = loaded["suite"] if records else loaded["tasks"]
    rows = [r for r in suite_rows if "strategies" in r.get("thawline", {})]
    wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
    rows = [r for r in rows if not wanted or r["task"] in wanted]
    if not rows:
        print("error: no finished task in the suite results (or none of --tasks)", file=sys.stderr)
        return 2
    done: dict[str, dict] = {}
    if records:
        args.rescore, done = True, {r["task"]: r for r in records["advise"]}
        out.mkdir(parents=True, exist_ok=True)
    elif (args.resume or args.rescore) and (out / "advise_suite.json").is_file():
        done = {r["task"]: r for r in json.loads((out / "advise_suite.json").read_text())["tasks"]}
    if args.rescore and not done:
        print(f"error: --rescore needs {out / 'advise_suite.json'} from an earlier run", file=sys.stderr)
        return 2
    results = []
    for row in rows:
        if args.rescore and row["task"] in done:
            results.append(score_task(row, done[row["task"]]))
            continue
        if row["task"] in done and ("halving" in done[row["task"]] or args.no_halving):
            results.append(done[row["task"]])
            continue
        print(f"[{row['task']}] advise{'' if args.no_halving else ' and halving'} ...", flush=True)
        results.append(run_task(row, data_root, out, halving=not args.no_halving))
        summary = summarise(results)
        (out / "advise_suite.json").write_text(json.dumps({"summary": summary, "tasks": results}, indent=1))
        (out / "advise_suite.md").write_text(format_markdown(results, summary))
    summary = summarise(results)
    (out / "advise_suite.json").write_text(json.dumps({"summary": summary, "tasks": results}, indent=1))
    (out / "advise_suite.md").write_text(format_markdown(results, summary))
    if args.export:
        export_records(rows, results, Path(args.export))
    print(format_markdown(results, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
