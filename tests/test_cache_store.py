"""The user cache as a store: content-hash keys, LRU eviction under THAWLINE_CACHE_MAX_GB, `thawline cache ls/clear`."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from thawline.cli import main
from thawline.core.errors import ThawlineError
from thawline.data import cache_admin
from thawline.data import cache_store as cache
from thawline.data.cache_admin import cache_entries, enforce_limit
from thawline.data.image_cache import build_image_cache

DAY = 86400.0


def _bmp_folder(root: Path, n: int = 4, seed: int = 0) -> list[str]:
    """Uncompressed BMPs: a file with other pixels has exactly the same size."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = root / f"img{i}.bmp"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _replace_keeping_size_and_mtime(path: str, pixels: np.ndarray, in_place: bool) -> None:
    """What cp -p (in place: same inode) or rsync -t (a new file renamed over it) does with a changed file: new bytes,
    same size, same mtime."""
    before = os.stat(path)
    tmp = path + ".new.bmp"
    Image.fromarray(pixels).save(tmp)
    if in_place:
        with open(path, "r+b") as f:
            f.write(Path(tmp).read_bytes())
        os.unlink(tmp)
    else:
        os.replace(tmp, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert (after.st_ino == before.st_ino) == in_place


@pytest.mark.parametrize("in_place", [True, False], ids=["cp-p", "rsync-t"])
@pytest.mark.parametrize("memo", [True, False], ids=["memoised-key", "fresh-key"])
def test_same_size_same_mtime_replacement_rebuilds_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memo: bool, in_place: bool
) -> None:
    if memo:
        monkeypatch.setattr(cache, "RACY_S", 0.0)  # the files were just written: memoise their hash anyway
    paths = _bmp_folder(tmp_path / "data")
    first = build_image_cache(paths, 8, "nearest", tmp_path / "c", workers=1)
    assert (tmp_path / "c" / "images" / "index").is_dir() == memo
    new = np.full((8, 8, 3), 7, np.uint8)
    time.sleep(0.05)  # past the file system's timestamp tick (the 2 s RACY_S guard, switched off above, covers it)
    _replace_keeping_size_and_mtime(paths[2], new, in_place)
    second = build_image_cache(paths, 8, "nearest", tmp_path / "c", workers=1)
    assert second.key != first.key
    np.testing.assert_array_equal(second.store.read([2])[0], new)
    assert not np.array_equal(first.store.read([2])[0], new)


def test_unchanged_files_reuse_the_memoised_content_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "RACY_S", 0.0)
    paths = _bmp_folder(tmp_path / "data")
    first = build_image_cache(paths, 8, "nearest", tmp_path / "c", workers=1)
    reads = []
    real = cache._file_digest
    monkeypatch.setattr(cache, "_file_digest", lambda p: reads.append(p) or real(p))
    again = build_image_cache(paths, 8, "nearest", tmp_path / "c", workers=1)
    assert again.key == first.key and reads == []  # a stat per file, no read
    os.utime(paths[0])  # touched: stat changes, the bytes do not -> hashed again, same cache
    third = build_image_cache(paths, 8, "nearest", tmp_path / "c", workers=1)
    assert third.key == first.key and len(reads) == len(paths)


def _fake_entry(root: Path, kind: str, key: str, size: int, age_days: float, what: str = "") -> Path:
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{key}.{'u8' if kind == 'images' else 'f32'}"
    data.write_bytes(os.urandom(size))
    meta = folder / f"{key}.json"
    meta.write_text(json.dumps({"for": what} if what else {}))
    stamp = time.time() - age_days * DAY
    for p in (data, meta):
        os.utime(p, (stamp, stamp))
    return data


def test_lru_eviction_goes_oldest_first_and_spares_entries_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "c"
    kb = 64 * 1024
    oldest = _fake_entry(root, "images", "a" * 20, kb, 30)
    held = _fake_entry(root, "features", "m_s3_v1_" + "b" * 20 + "_f_4_1", kb, 20)  # another process reads it
    mine = _fake_entry(root, "images", "c" * 20, kb, 10)  # this process reads it
    middle = _fake_entry(root, "images", "d" * 20, kb, 5)
    newest = _fake_entry(root, "features", "m_s3_v1_" + "e" * 20 + "_f_4_1", kb, 1)
    stale_tmp = root / "images" / f".{'f' * 20}.999999999.tmp"  # a killed build (no such pid)
    stale_tmp.write_bytes(b"x" * kb)
    sizes = {e.data: e.size for e in cache_entries(root)}
    assert sizes[oldest] >= kb
    # Room for exactly three entries: the stale temp file goes, then the least recently used that nobody holds.
    monkeypatch.setenv(cache_admin.MAX_GB_ENV, str((3 * sizes[oldest] + 2 * 4096) / 1e9))
    cache._use(mine)
    other = os.open(held, os.O_RDONLY)
    fcntl.flock(other, fcntl.LOCK_SH)
    try:
        removed = enforce_limit(root)
    finally:
        os.close(other)
        cache._release(mine)
    assert [e.files[0].name for e in removed] == [stale_tmp.name, oldest.name, middle.name]
    assert [e.data for e in cache_entries(root)] == [held, mine, newest]


def test_using_an_image_cache_touches_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "c"
    a = build_image_cache(_bmp_folder(tmp_path / "a", seed=1), 8, "nearest", root, workers=1)
    b = build_image_cache(_bmp_folder(tmp_path / "b", seed=2), 8, "nearest", root, workers=1)
    a.store.close(), b.store.close()
    cache._release(a.store.path), cache._release(b.store.path)  # as in a later process
    for entry in cache_entries(root):
        for p in entry.files:
            os.utime(p, (time.time() - DAY, time.time() - DAY))
    build_image_cache(_bmp_folder(tmp_path / "a", seed=1), 8, "nearest", root, workers=1).store.close()
    cache._release(a.store.path)
    assert [e.key for e in cache_entries(root)] == [b.key, a.key]  # a was used last
    monkeypatch.setenv(cache_admin.MAX_GB_ENV, "0")
    assert [e.key for e in enforce_limit(root)] == [b.key, a.key]


def test_cache_ls_and_clear_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "c"
    paths = _bmp_folder(tmp_path / "photos", n=3)
    built = build_image_cache(paths, 8, "nearest", root, workers=1)
    built.store.close()
    cache._release(built.store.path)
    feature_key = f"resnet50_s4_v2_{built.key}_0123456789abcdef0123"
    _fake_entry(root, "features", feature_key, 4096, 40)
    assert main(["cache", "ls", "--cache-dir", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["KIND", "SIZE", "LAST", "USED"]
    images, features = lines[1], lines[2]  # most recently used first
    assert images.startswith("images")
    assert f"3 images under {tmp_path / 'photos'} at 8 px (nearest)" in images
    assert features.startswith("features")
    assert "resnet50 features before stage 4, 2 view(s) of its rows (3 images under" in features
    assert f"images under {tmp_path / 'photos'}" in features
    assert lines[3].startswith("2 entries, ") and str(root) in lines[3] and "cap 20.0 GB" in lines[3]

    assert main(["cache", "clear", "--older-than", "30", "--cache-dir", str(root)]) == 0
    assert capsys.readouterr().out.startswith("removed 1 cache entry unused for more than 30 days (")
    assert [e.kind for e in cache_entries(root)] == ["images"]
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert capsys.readouterr().out.startswith("removed 1 cache entry (")
    assert cache_entries(root) == [] and not list((root / "images" / "index").glob("*"))
    assert main(["cache", "ls", "--cache-dir", str(root)]) == 0
    assert capsys.readouterr().out.startswith(f"no cache entries in {root}")


def test_clear_keeps_what_a_run_is_reading(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "c"
    built = build_image_cache(_bmp_folder(tmp_path / "d"), 8, "nearest", root, workers=1)
    built.store.read([0])  # open, as a training run has it
    assert main(["cache", "ls", "--cache-dir", str(root)]) == 0
    assert "[in use]" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert capsys.readouterr().out.startswith("removed 0 cache entries (0 B); kept 1 in use")
    assert built.store.read([1]).shape == (1, 8, 8, 3)


def test_bad_cache_cap_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache_admin.MAX_GB_ENV, "lots")
    with pytest.raises(ThawlineError, match="THAWLINE_CACHE_MAX_GB='lots' is not a size in GB"):
        cache_admin.cache_limit_bytes()
    monkeypatch.setenv(cache_admin.MAX_GB_ENV, "off")
    assert cache_admin.cache_limit_bytes() is None


def test_feature_entries_say_what_they_were_computed_from() -> None:
    images = {"a" * 20: "12 images under /data/val at 224 px (bicubic)"}
    of = "(images under /data/val at 224 px (bicubic))"
    train = cache_admin._describe_features(f"tf_efficientnet_lite0_s4_v2_{'a' * 20}_{'f' * 20}", images)
    rows = "(12 images under /data/val at 224 px (bicubic))"  # a row per image of the image cache
    assert train == f"tf_efficientnet_lite0 features before stage 4, 2 view(s) of its rows {rows}"
    mlp = cache_admin._describe_features(f"resnet50_s4_h-mlp_v1_{'a' * 20}_{'f' * 20}", images)
    assert mlp == f"resnet50 features before stage 4 (mlp head), 1 view(s) of its rows {rows}"
    older = cache_admin._describe_features(f"resnet50_s4_v2_{'a' * 20}_{'f' * 20}_12_77", images)  # thawline 0.1
    assert older == f"resnet50 features before stage 4, 2 view(s), 12 images {of}"
    advise_key = f"advise_tf_efficientnet_lite0_{'a' * 20}_{'f' * 20}_amp0cl1_12_0123456789"
    advise = cache_admin._describe_features(advise_key, images)
    assert advise == f"advise probe features of tf_efficientnet_lite0, 12 images {of}"
