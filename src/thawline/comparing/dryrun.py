"""`compare --dry-run`: the plan of a comparison and how long it will take, without training anything and without
writing into its folder (`plan_compare`, `format_plan`); and the same estimate as the progress line's start
(`compare_progress`)."""

from __future__ import annotations

from pathlib import Path

from thawline.comparing.estimate import Estimate, estimate
from thawline.comparing.options import CompareOptions
from thawline.comparing.plan import ComparePlan, build_plan
from thawline.comparing.progress import Progress, clock_text, progress_stream
from thawline.core.config import TrainConfig
from thawline.core.errors import ThawlineError
from thawline.training.runfolder import check_fresh_folder

CACHED_MARK = "*"  # after a phase that trains on cached frozen-prefix features


def plan_compare(config: TrainConfig, options: CompareOptions) -> Estimate:
    """The plan of `run_comparison(config, options)` and its estimate: the listing read, a weightless model built,
    each kind of step timed a few times; nothing decoded beyond a few images, nothing written. Refused in one line
    where the compare would refuse before training (options, strategies, models, data folder, --out)."""
    if options.resume:
        raise ThawlineError("--dry-run plans a fresh comparison; drop --resume (a resumed one skips what finished)")
    folder = options.out or config.out
    if folder and not options.overwrite:
        check_fresh_folder(Path(folder), "compare")
    return estimate(build_plan(config, options), config)


def compare_progress(config: TrainConfig, options: CompareOptions) -> Progress | None:
    """The progress line of a compare, started with the dry run's estimate (printed first); None when quiet."""
    stream = progress_stream(options.quiet)
    if stream is None:
        return None
    guess = estimate(build_plan(config, options), config)
    print(estimate_line(guess), file=stream, flush=True)
    return Progress(guess.plan.batches, guess.request_seconds, jobs=guess.plan.full_speed, stream=stream)


def estimate_line(guess: Estimate) -> str:
    plan = guess.plan
    decode = f"decoding {plan.decode_images} images ~{clock_text(guess.decode_seconds)}, " if plan.decode_images else ""
    jobs = f", {plan.jobs} at a time" if plan.jobs > 1 else ""
    if plan.full_speed < plan.jobs:
        jobs += f" ({plan.full_speed} at full speed: the workers' threads outnumber the CPU cores)"
    return (f"estimate: {len(plan.requests)} trainings{jobs}, ~{clock_text(guess.total_seconds)} in all ({decode}"
            f"training ~{clock_text(guess.training_seconds)}; from {guess.costs.seconds:.1f} s of timed steps here, "
            "an estimate)")  # fmt: skip


def format_plan(guess: Estimate) -> str:
    """The plan as a table (one row per trial: its phases, epochs, steps and images, cached phases marked) and the
    estimate under it."""
    plan = guess.plan
    header = ("trial", "phases", "epochs", "steps", "train imgs", "feature imgs", "val imgs", "estimate")
    rows = [header]
    for trial in plan.trials.values():
        t = trial.trial
        tag = (f" seed {t.seed}" if t.seed != plan_first_seed(plan) else "") + (
            f" fold {t.fold + 1}" if t.fold is not None else "")  # fmt: skip
        phases = " → ".join(p.train + (CACHED_MARK if p.cached else "") for p in trial.phases)
        counts = [sum(getattr(p, key) for p in trial.phases) for key in ("steps", "train_images", "feature_images")]
        rows.append((t.name + tag, phases, "+".join(str(p.epochs) for p in trial.phases), *map(str, counts),
                     str(sum(p.val_images for p in trial.phases) + trial.finish_images),
                     f"~{clock_text(guess.trial_seconds(trial))}"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([plan_line(plan), *lines, *legend(plan), estimate_line(guess)])


def plan_first_seed(plan: ComparePlan) -> int:
    return min(t.seed for t in plan.trials)


def plan_line(plan: ComparePlan) -> str:
    first = next(iter(plan.trials.values()))
    models = ", ".join(f"{m} at {plan.img_size[m]} px ({plan.n_stages[m]} stages)" for m in plan.img_size)
    test = f", {first.n_test} test" if first.n_test else ""
    return (f"plan: {len(plan.trials)} trials on {models}, batch {plan.batch_size}; {first.n_train} train, "
            f"{first.n_val} val{test} images a trial")  # fmt: skip


def legend(plan: ComparePlan) -> list[str]:
    lines = [f"{CACHED_MARK}: trains on cached frozen-prefix features (feature imgs: the prefix's passes that fill the "
             "cache, shared by the trials with the same prefix); val imgs include the final evaluation"]  # fmt: skip
    if plan.decode_images:
        lines.append(f"{plan.decode_images} images to decode first (not in the image cache yet)")
    return lines + [f"note: {n}" for n in plan.notes]
