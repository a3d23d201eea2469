"""Trust in what is written: one atomic write path, real write faults (a file-size limit standing in for a full disk,
a read-only folder) and Ctrl-C while the decode pool runs end in one line, with no temp file and nothing half
written read back."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from thawline.core.atomic import WriteFailed, append_text, atomic_file, write_text_atomic

SRC = str(Path(__file__).resolve().parents[1] / "src")


def temp_files(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots if root.exists() for p in root.rglob("*") if p.name.endswith(".tmp"))


def file_size_limit(limit: int):
    """preexec_fn: writes past `limit` bytes fail with EFBIG, as they would with ENOSPC on a full disk (SIGXFSZ is
    ignored, so the write returns an error instead of killing the process)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def env(cache: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "THAWLINE_CACHE_DIR": str(cache), "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("stop", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, stop: BaseException) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(type(stop)), atomic_file(target, "w") as f:
        f.write("new, half")
        raise stop
    assert target.read_text() == "old" and temp_files(tmp_path) == []


def test_write_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("")
    with pytest.raises(WriteFailed) as info:
        write_text_atomic(blocker / "metrics.json", "{}")
    assert str(info.value) == (
        f"cannot write {blocker / 'metrics.json'}: Not a directory "
        "(a part of the path is a file, not a folder; pass --out elsewhere)"
    )
    assert info.value.exit_code == 1


API_UNDER_LIMIT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from thawline.core.atomic import WriteFailed, write_bytes_atomic
    from thawline.data.image_cache import build_image_cache
    from thawline.training.checkpoint import save_checkpoint
    from thawline.training.runfolder import append_jsonl

    out, data, cache = (Path(a) for a in sys.argv[1:4])
    results = {}

    def attempt(name, fn):
        try:
            fn()
            results[name] = "written"
        except WriteFailed as e:
            results[name] = str(e)

    attempt("bytes", lambda: write_bytes_atomic(out / "blob.bin", b"x" * 200_000))
    attempt("checkpoint", lambda: save_checkpoint(out / "last.pt", {"w": torch.zeros(100_000)}))
    attempt("append", lambda: append_jsonl(out / "metrics.jsonl", {"epoch": 2, "pad": "y" * 50_000}))
    paths = sorted(str(p) for p in data.rglob("*.png"))
    attempt("cache", lambda: build_image_cache(paths, 64, "bilinear", cache, workers=2))

    from thawline.training.tracking import Tracker, event_file

    tracker = Tracker(out / "tb", "tb", {})
    results["events"] = event_file(tracker.tb)

    def log_and_close():
        tracker.image("grid", out / "noise.png", 1)  # ~120 kB: past the limit once the writer thread flushes
        tracker.close()

    attempt("tensorboard", log_and_close)
    print(json.dumps(results))
    """
)


def test_a_full_disk_fails_each_write_in_one_line_and_keeps_what_was_there(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past 64 kB fail for real (EFBIG), in a child process."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    out.mkdir()
    (out / "blob.bin").write_bytes(b"old")
    (out / "last.pt").write_bytes(b"previous checkpoint")
    line = json.dumps({"epoch": 1}) + "\n"
    (out / "metrics.jsonl").write_text(line * 2000)  # 28 kB: the next line (50 kB) crosses the 64 kB limit
    data = make_image_folder(tmp_path / "data", {"train": 4})  # 12 images: 144 kB of 64 px rows
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(out / "noise.png")
    proc = subprocess.run(
        [sys.executable, "-c", API_UNDER_LIMIT, str(out), str(data), str(cache)],
        capture_output=True, text=True, timeout=300, env=env(cache), preexec_fn=file_size_limit(64 * 1024),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    fix = "(a file-size limit (ulimit -f) or the file system caps its size; raise it or pass --out elsewhere)"
    assert results["bytes"] == f"cannot write {out / 'blob.bin'}: File too large {fix}"
    kept = "; the previous checkpoint is intact"
    assert results["checkpoint"] == f"cannot write {out / 'last.pt'}: File too large {fix}{kept}"
    assert results["append"] == f"cannot write {out / 'metrics.jsonl'}: File too large {fix}"
    cache_fix = fix.replace("pass --out elsewhere", "set THAWLINE_CACHE_DIR (or --cache-dir) elsewhere")
    assert results["cache"].startswith(f"cannot write {cache / 'images'}/") and results["cache"].endswith(
        f".u8: File too large {cache_fix}"
    )
    assert results["tensorboard"] == f"cannot write {results['events']}: File too large {fix}"
    assert "Traceback" not in proc.stderr and "Exception in thread" not in proc.stderr, proc.stderr[-3000:]
    # Nothing half written is there to be read back: old files intact, no half line, no temp or cache file.
    assert (out / "blob.bin").read_bytes() == b"old"
    assert (out / "last.pt").read_bytes() == b"previous checkpoint"
    assert (out / "metrics.jsonl").read_text() == line * 2000
    assert temp_files(out, cache) == []
    assert not list(cache.glob("images/*.u8")) and not list(cache.glob("images/*.json"))


def test_append_failure_cuts_the_half_line_off(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n')
    code = (
        "import sys; from thawline.core.atomic import append_text, WriteFailed\n"
        "try: append_text(sys.argv[1], 'z' * 100_000 + '\\n')\n"
        "except WriteFailed as e: print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
        env=env(tmp_path / "cache"), preexec_fn=file_size_limit(16 * 1024),
    )  # fmt: skip
    assert "File too large" in proc.stdout, proc.stderr
    assert path.read_text() == '{"epoch": 1}\n'
    append_text(path, '{"epoch": 2}\n')
    assert path.read_text().splitlines() == ['{"epoch": 1}', '{"epoch": 2}']


def train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "thawline", "train", "--data", str(data), "--model", "test_efficientnet",
        "--weights", "none", "--strategy", "head-only", "--epochs", "1", "--img-size", "32", "--min-steps", "0",
        "--head-steps", "0", "--out", str(out), *extra,
    ]  # fmt: skip


def test_train_on_a_full_disk_is_one_line_exit_1(tmp_path: Path) -> None:
    """A checkpoint (~450 kB) that does not fit under a 200 kB file-size limit: the image and feature caches do."""
    data = make_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = subprocess.run(
        train_command(data, out, "--workers", "1", "--quiet"), capture_output=True, text=True, timeout=300,
        env=env(cache), preexec_fn=file_size_limit(200 * 1024),
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"thawline: error: cannot write {out / 'best.pt'}: File too large"), lines[0]
    assert temp_files(out, cache) == []
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()
    # What was written is whole: the metrics line, and every image cache with its rows and metadata.
    assert [json.loads(r)["epoch"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    metas = sorted(cache.glob("images/*.json"))
    assert len(metas) == 2 and len(list(cache.glob("images/*.u8"))) == 2
    for meta in metas:
        info = json.loads(meta.read_text())
        assert meta.with_suffix(".u8").stat().st_size == info["n"] * info["size"] ** 2 * 3


RO_SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys
    from pathlib import Path
    import torch
    from thawline.core.atomic import WriteFailed, write_text_atomic
    from thawline.data.image_cache import build_image_cache
    from thawline.training.checkpoint import save_checkpoint
    from thawline.core.errors import ThawlineError
    from thawline.training.runfolder import append_jsonl, make_writable_folder

    run, data, cache = (Path(a) for a in sys.argv[1:4])
    results = {}

    def attempt(name, fn):
        try:
            fn()
            results[name] = "written"
        except ThawlineError as e:
            results[name] = [type(e).__name__, str(e)]

    attempt("probe", lambda: make_writable_folder(run / "new"))
    attempt("summary", lambda: write_text_atomic(run / "summary.json", "{}"))
    attempt("checkpoint", lambda: save_checkpoint(run / "last.pt", {"w": torch.zeros(3)}))
    attempt("append", lambda: append_jsonl(run / "metrics.jsonl", {"epoch": 2}))
    paths = sorted(str(p) for p in data.rglob("*.png"))
    attempt("cache", lambda: build_image_cache(paths, 16, "bilinear", cache, workers=1))
    cli = [sys.executable, "-m", "thawline", "cache", "clear", "--cache-dir", str(cache)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    results["clear"] = [done.returncode, done.stderr]
    print(json.dumps(results))
    """
)


def read_only_command(folders: list[Path], command: list[str]) -> list[str] | None:
    """`command` with `folders` read-only: a read-only bind mount in a private mount namespace as root (chmod does
    not stop root), chmod 0555 otherwise; None when neither can be had."""
    if os.geteuid() != 0:
        for folder in folders:
            folder.chmod(0o555)
        return command
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        return None
    mounts = " && ".join(f'mount --bind "${i}" "${i}" && mount -o remount,bind,ro "${i}"' for i in (1, 2))
    return ["unshare", "-m", "sh", "-c", f'{mounts} && shift 2 && exec "$@"', "sh", *map(str, folders), *command]


def test_a_read_only_folder_fails_each_write_in_one_line(tmp_path: Path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    run.mkdir()
    (run / "last.pt").write_bytes(b"previous checkpoint")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    data = make_image_folder(tmp_path / "data", {"train": 2})
    paths = sorted(str(p) for p in data.rglob("*.png"))
    from thawline.data.cache_admin import cache_entries
    from thawline.data.image_cache import build_image_cache

    build_image_cache(paths, 8, "bilinear", cache, workers=1).store.close()  # an entry for `cache clear` to try
    entries = [e.files for e in cache_entries(cache)]
    command = read_only_command([run, cache], [sys.executable, "-c", RO_SCRIPT, str(run), str(data), str(cache)])
    if command is None:
        pytest.skip("running as root without mount namespaces (unshare -m): no folder can be made read-only")
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env(cache))
    finally:
        for folder in (run, cache):
            folder.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    denied = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    fix = "the file system is read-only; " if os.geteuid() == 0 else "make the folder writable or "
    new, out_fix = run / "new", f"({fix}pass --out elsewhere)"
    assert results["probe"] == ["WriteFailed", f"cannot write to run folder '{new}' ({denied}); pass a writable --out"]
    assert results["summary"] == ["WriteFailed", f"cannot write {run / 'summary.json'}: {denied} {out_fix}"]
    kept = "; the previous checkpoint is intact"
    assert results["checkpoint"] == ["WriteFailed", f"cannot write {run / 'last.pt'}: {denied} {out_fix}{kept}"]
    assert results["append"] == ["WriteFailed", f"cannot write {run / 'metrics.jsonl'}: {denied} {out_fix}"]
    kind, message = results["cache"]
    assert kind == "WriteFailed" and message.startswith(f"cannot write {cache / 'images'}/"), message
    assert message.endswith(f".u8: {denied} ({fix}set THAWLINE_CACHE_DIR (or --cache-dir) elsewhere)"), message
    code, stderr = results["clear"]
    lines = stderr.splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("thawline: error: cannot remove "), stderr
    assert f"from the cache: {denied} (make {cache} writable" in lines[0]
    # Nothing changed and no temp file: what a later run reads is what was there.
    assert (run / "last.pt").read_bytes() == b"previous checkpoint"
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert [e.files for e in cache_entries(cache)] == entries and temp_files(run, cache) == []


def slow_folder(root: Path, per_class: int) -> Path:
    """Images that take ~60 ms each to decode (2000x2000 PNGs), small on disk (43 kB): copies of one file in train,
    of another in val (no leakage between the splits)."""
    n = 2000
    yy, xx = np.mgrid[:n, :n]
    root.mkdir(parents=True)
    for split, count, shift in (("train", per_class, 0), ("val", 1, 1)):
        pixels = np.stack([xx * 255 // n, yy * 255 // n, (xx ^ (yy + shift)) & 255], -1).astype(np.uint8)
        source = root / f"{split}.png"
        Image.fromarray(pixels).save(source)
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                shutil.copyfile(source, root / split / cls / f"{i}.png")
        source.unlink()
    return root


def default_sigint() -> None:
    """In the child before exec: Ctrl-C's default action, so Python installs its KeyboardInterrupt handler. A test
    run started in the background by a shell without job control inherits SIGINT ignored, and the child would then
    ignore the test's Ctrl-C and finish (exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_the_pool_decodes_is_one_line_130(tmp_path: Path) -> None:
    """SIGINT to the whole process group (what Ctrl-C in a terminal sends) while worker processes decode."""
    # 160 images (~5 s of decoding on 2 workers): a test process that a loaded machine starves for a second or two
    # still signals while the pool decodes (with 60 the run had sometimes finished before the signal: exit 0).
    data = slow_folder(tmp_path / "data", per_class=80)
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        train_command(data, tmp_path / "run", "--workers", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env(cache), start_new_session=True, preexec_fn=default_sigint,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list(cache.glob("images/.*.tmp")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "decoding never started"
            time.sleep(0.02)
        time.sleep(0.3)  # the workers are decoding now
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert lines == ["thawline: interrupted before training started; rerun the command"], stderr[-3000:]
    assert temp_files(cache, tmp_path / "run") == [] and not list(cache.glob("images/*.u8"))
    with pytest.raises(ProcessLookupError):  # no worker outlived the run
        os.killpg(proc.pid, 0)
    # The rerun builds the cache whole.
    from thawline.data.image_cache import build_image_cache

    paths = sorted(str(p) for p in (data / "train").rglob("*.png"))
    rebuilt = build_image_cache(paths, 32, "bicubic", cache, workers=2)
    assert rebuilt.ok.all() and temp_files(cache) == []
    rows = rebuilt.store.read([0, len(paths) - 1])
    np.testing.assert_array_equal(rows[0], rows[1])
