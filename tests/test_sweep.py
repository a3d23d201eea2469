"""`thawline sweep`: the search space as data, one-line errors, resume after kill -9, and a shared PostgreSQL study."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import make_image_folder

from thawline.cli import main
from thawline.comparing.sweep import strategy_to_dict, suggest_strategy
from thawline.core.config import make_config
from thawline.core.errors import ThawlineError
from thawline.training.strategies import STRATEGIES, get_strategy, resolve

TINY = ["--model", "test_efficientnet", "--weights", "none", "--img-size", "32", "--batch-size", "16"]
FINISHED = ("COMPLETE", "PRUNED")


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", {"train": 8, "val": 4, "test": 4})


def sweep_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "thawline", "sweep", "--data", str(data), "--out", str(out), *TINY, *extra]


def states(storage: str) -> Counter:
    study = optuna.load_study(study_name="thawline-sweep", storage=storage)
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def test_trial_strategy_is_data_built_from_the_sampled_values() -> None:
    trial = optuna.trial.FixedTrial({"lr_mult": 2.0, "lr2_mult": 0.5, "phase1_epochs": 3, "layer_decay": 0.8})
    s = suggest_strategy(trial, STRATEGIES["two-phase"], budget=5)
    assert [(p.train, p.epochs, p.lr, p.layer_decay) for p in s.phases] == [
        ("head", 3, 2e-4, 1.0),  # a head-only phase keeps decay 1 (nothing below the head trains)
        ("all", 2, 1e-5, 0.8),  # 1e-5 * 2.0 * 0.5
    ]
    assert [p.epochs for p in resolve(s, n_stages=9, budget=5)] == [3, 2]

    trial = optuna.trial.FixedTrial({"lr_mult": 1.0, "partial_frac": 0.45, "layer_decay": 0.6})
    s = suggest_strategy(trial, STRATEGIES["partial"], budget=4)
    assert s.phases[0].train == "after:0.45" and s.phases[0].layer_decay == 0.6
    # head-only samples nothing but its LR (FixedTrial raises on any other suggestion)
    head = suggest_strategy(optuna.trial.FixedTrial({"lr_mult": 0.5}), STRATEGIES["head-only"], 4)
    assert [(p.train, p.lr, p.layer_decay) for p in head.phases] == [("head", 5e-4, 1.0)]
    # The strategies-file form reads back through the normal loader.
    from thawline.training.strategies import strategy_from_dict

    assert strategy_from_dict("x", strategy_to_dict(s)).phases == s.phases


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--strategies", "head-only,fulll"], "full"),
        (["--trials", "0"], "--trials 0"),
        (["--storage", "not-a-url"], "not a database URL"),
        (["--storage", "postgresql://me:s3cret@127.0.0.1:1/db"], "cannot open the database"),
        (["--epochs", "1", "--strategies", "head-only,two-phase"], "--epochs 2"),
    ],
)
def test_bad_input_is_one_line(
    args: list[str], fragment: str, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = main(["sweep", "--data", str(image_folder), "--out", str(tmp_path / "sw"), *TINY, *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("thawline: error:"), err
    assert fragment in lines[0] and "s3cret" not in lines[0]


def test_sweep_resumes_after_kill_and_writes_best_config(small_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "sw"
    cmd = sweep_cmd(small_folder, out, "--epochs", "2", "--trials", "4")
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    metrics = out / "trial-0" / "metrics.jsonl"
    while not (metrics.exists() and metrics.stat().st_size > 0):
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < deadline, "the first trial wrote no epoch in 120 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the worker and any decoder processes it started
    first.wait(timeout=30)

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    storage = f"sqlite:///{out / 'sweep.db'}"
    counts = states(storage)
    assert sum(counts[s] for s in FINISHED) == 4, counts
    assert counts["RUNNING"] == 0 and counts["FAIL"] <= 1, counts  # the killed trial, failed at once on restart
    if counts["FAIL"]:
        assert "FAIL: their worker on this machine is gone" in second.stdout

    summary = json.loads((out / "sweep_summary.json").read_text())
    assert summary["trials_finished"] == 4 and summary["best"]["trial"] is not None
    assert ("importances" in summary) != ("importances_omitted" in summary)
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 1 + sum(counts.values())
    config = make_config({}, str(out / "best_config.yaml"))
    strategy = get_strategy(config.strategy, config.strategies_file)
    assert config.epochs == 2 and config.model == "test_efficientnet" and strategy.name.endswith("-tuned")
    assert yaml.safe_load((out / "best_strategy.yaml").read_text())["strategies"][strategy.name]["phases"]
    assert (Path(summary["best"]["run_dir"]) / "summary.json").exists()

    # The sweep's report lists every trial with its state, and ranks the finished ones.
    html = (out / "report.html").read_text()
    assert html.count('<tr class="') - html.count('data-strategy=') >= 4  # one trials-table row per trial
    for n in range(4):
        assert f"<td>{n}</td>" in html
    assert f"report: {out / 'report.html'}" in second.stdout


# ---- PostgreSQL: several workers share one study ----------------------------------------------------------


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on a free local port (run as user postgres when the tests run as root)."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL not installed: apt-get install postgresql")
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg not installed: pip install -e '.[test]' (psycopg[binary], SQLAlchemy's default driver)")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="thawline-pg-"))  # not tmp_path: the postgres user must reach it
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser")
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = None
        if not runuser or pw is None:
            shutil.rmtree(root)
            pytest.skip("running as root without runuser and a 'postgres' user: cannot start a PostgreSQL server")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], cwd=root, check=True, capture_output=True, timeout=120)

    try:
        run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-o", opts, "-w", "start")
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE sweep")
        yield f"postgresql://postgres@127.0.0.1:{port}/sweep"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], cwd=root, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgres_study(small_folder: Path, tmp_path: Path, postgres_url: str) -> None:
    cmd = sweep_cmd(small_folder, tmp_path / "sw", "--epochs", "2", "--trials", "4", "--storage", postgres_url)
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err
    study = optuna.load_study(study_name="thawline-sweep", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    # Both stop at 4 finished in total; two workers seeing 3 at the same instant may each start one more.
    assert 4 <= sum(counts[s] for s in FINISHED) <= 5 and counts["RUNNING"] == 0, counts
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2  # both workers ran trials of the study
    assert {p.name for p in (tmp_path / "sw").glob("trial-*")} == {f"trial-{t.number}" for t in trials}


def test_median_pruner_stops_trials_below_the_median(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every epoch's val acc reaches Optuna; a trial below the median of earlier ones stops at epoch 2 of 4."""
    import thawline.training.run_state
    import thawline.training.trainer
    from thawline.comparing.sweep import sweep

    epochs_run: dict[int, int] = {}

    def fake_train(cfg, *, data, run_dir, quiet, strategy, on_epoch):
        number = int(Path(run_dir).name.split("-")[1])
        acc = 0.9 - 0.1 * number  # later trials are worse: from the third on, each is below the median
        for epoch in range(1, cfg.epochs + 1):
            epochs_run[number] = epoch
            on_epoch({"epoch": epoch, "val_acc": acc * epoch / cfg.epochs})
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        return thawline.training.run_state.RunResult(Path(run_dir), {"best_val_acc": acc, "test_acc": None}, [])

    monkeypatch.setattr(thawline.training.trainer, "train", fake_train)
    config = make_config({"data": str(small_folder), "model": "test_efficientnet", "img_size": 32, "epochs": 4})
    result = sweep(config, ["head-only", "full"], trials=5, out=tmp_path / "sw", quiet=True)
    by_state = Counter(r["state"] for r in result.rows)
    assert by_state == {"COMPLETE": 2, "PRUNED": 3}, result.rows
    assert all(epochs_run[r["number"]] == 2 for r in result.rows if r["state"] == "PRUNED")
    assert result.summary["best"]["trial"] == 0 and result.summary["trials_finished"] == 5
    assert "importances" in result.summary or "importances_omitted" in result.summary

    # The study keeps its search: another budget needs another --study or --out.
    with pytest.raises(ThawlineError, match="epochs 4"):
        sweep(make_config({**config.to_dict(), "epochs": 3}), ["head-only", "full"], trials=5, out=tmp_path / "sw")
