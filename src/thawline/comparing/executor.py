"""Runs a comparison's requests: `InProcessExecutor` trains each in this process on data decoded once;
`pool.LocalPoolExecutor` (`compare --jobs N`) trains N at a time in worker processes. An executor runs a
scheduler's batch (`run_batch`: every request of a halving rung, of a fold, or all the trials) and returns when all
of it is done, so the scheduler decides on the whole batch whatever the executor; each request goes into its
trial's folder, and what that folder holds never depends on which executor trained it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from thawline.comparing.trials import Request, trial_folder
from thawline.core.config import TrainConfig, load_yaml_mapping, replace
from thawline.core.errors import ThawlineError
from thawline.core.runformat import CONFIG, CONFIG_FILE, LAST_CKPT, SUMMARY_FILE
from thawline.data import fingerprint
from thawline.training.prepare import PreparedData
from thawline.training.run_state import RunResult
from thawline.training.runfolder import first_difference, mismatch_message
from thawline.training.strategies import get_strategy
from thawline.training.trainer import train


class Executor(Protocol):
    on_done: Callable[[Request, float], None] | None  # told of each request as it finishes, with its seconds

    def run(self, request: Request) -> RunResult: ...

    def run_batch(self, requests: Sequence[Request]) -> dict[Request, RunResult]:
        """Every request of a batch (independent of each other), its results keyed by request, in the batch's order."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None:
        """Closed (its workers ended); on an error or Ctrl-C, stopped."""
        ...


class InProcessExecutor:
    """Trains each request with `config` (its trial's strategy, seed and model set) on `data`, into its trial's
    folder under `out_dir`. A request to the whole budget reuses a finished run when `resume` (its options
    checked) and otherwise trains, continuing a partial one when `resume`; a request until an epoch continues
    whatever its folder holds (a halving survivor, exactly as if it had never stopped) and pauses there. A trial of
    a fold trains on `fold_data(fold)` (its own train and val cut from the pool)."""

    def __init__(
        self,
        config: TrainConfig,
        data: PreparedData,
        out_dir: Path,
        *,
        resume: bool,
        quiet: bool,
        fold_data: Callable[[int], PreparedData] | None = None,
    ) -> None:
        self.config, self.data, self.out_dir, self.resume, self.quiet = config, data, out_dir, resume, quiet
        self.fold_data = fold_data
        self.on_done: Callable[[Request, float], None] | None = None  # each request's seconds, as it finishes

    def run(self, request: Request) -> RunResult:
        trial = request.trial
        data = self.data if trial.fold is None or self.fold_data is None else self.fold_data(trial.fold)
        run_dir = trial_folder(self.out_dir, trial, self.config.seed)
        model = {"model": trial.model} if trial.model else {}
        cfg = replace(self.config, **model, seed=trial.seed, strategy=trial.strategy, out=str(run_dir))
        strategy = get_strategy(trial.strategy, cfg.strategies_file)
        if request.until is not None:
            started = (run_dir / LAST_CKPT).is_file() or (run_dir / SUMMARY_FILE).is_file()
            return train(cfg, data=data, run_dir=run_dir, resume=started, quiet=self.quiet, strategy=strategy,
                         stop_after_epoch=request.until)  # fmt: skip
        finished = finished_run(run_dir, cfg, data) if self.resume else None
        if finished is not None:
            if not self.quiet:
                print(f"[{trial.strategy}] already finished in {run_dir}; skipped", flush=True)
            return finished
        return train(cfg, data=data, run_dir=run_dir, resume=self.resume, quiet=self.quiet, strategy=strategy)

    def run_batch(self, requests: Sequence[Request]) -> dict[Request, RunResult]:
        """The batch's requests one after another, in order."""
        results = {}
        for request in requests:
            start = time.perf_counter()
            results[request] = self.run(request)
            if self.on_done is not None:
                self.on_done(request, time.perf_counter() - start)
        return results

    def close(self) -> None:
        pass

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def finished_run(run_dir: Path, cfg: TrainConfig, data: PreparedData) -> RunResult | None:
    """The finished run in `run_dir` (summary.json), or None; refused when its config.yaml's defining options
    differ from `cfg`'s on `data`, so a resumed comparison never ranks runs trained with other options."""
    done = run_dir / SUMMARY_FILE
    if not done.exists():
        return None
    if not (run_dir / CONFIG_FILE).is_file():
        raise ThawlineError(f"'{run_dir}' holds a finished run without config.yaml, so its options cannot be checked; "
                            "pass a new --out")  # fmt: skip
    saved = load_yaml_mapping(str(run_dir / CONFIG_FILE))
    expected = {**cfg.to_dict(), CONFIG.img_size: data.img_size, CONFIG.classes: data.classes}
    for key in (CONFIG.amp, CONFIG.channels_last):  # derived from the device when not given: whatever the run derived
        if expected[key] is None:
            del expected[key]
    diff = first_difference(saved, expected)
    if diff is not None:
        raise ThawlineError(mismatch_message(run_dir, *diff))
    fingerprint.check_same_data(run_dir, data.fingerprint)  # nothing trained on other data is ranked
    return RunResult(run_dir, json.loads(done.read_text()))
