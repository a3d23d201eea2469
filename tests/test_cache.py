"""The frozen-prefix feature cache: filled on first use, exact values, durable marks, reuse across runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from thawline.data.feature_cache import FeatureCache, SplitFeatures

N, VIEWS, SHAPE = 10, 2, (3, 2, 2)


def feature(i: int, view: int) -> np.ndarray:
    return np.full(SHAPE, i * 10 + view, np.float32) + np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)


class Prefix:
    """Stands in for the frozen prefix; records which (row, view) pairs it was asked for (each once per call: a
    short call is padded with repeats) and each call's size."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.sizes: list[int] = []

    def __call__(self, idx: np.ndarray, views: np.ndarray) -> torch.Tensor:
        assert len(idx) == len(views)
        self.sizes.append(len(idx))
        self.calls.extend(dict.fromkeys((int(i), int(v)) for i, v in zip(idx, views, strict=True)))
        return torch.from_numpy(np.stack([feature(int(i), int(v)) for i, v in zip(idx, views, strict=True)]))


class SizeSensitivePrefix(Prefix):
    """A prefix whose last bits depend on the call's batch size, as a kernel's may (a CPU forward on 1 image)."""

    def __call__(self, idx: np.ndarray, views: np.ndarray) -> torch.Tensor:
        return super().__call__(idx, views) + 1e-6 * len(idx)


def test_features_are_computed_once_per_image_and_view_on_first_read(tmp_path: Path) -> None:
    prefix = Prefix()
    cache = FeatureCache("k", N, VIEWS, prefix, 4, tmp_path)
    rows, views = np.array([3, 1, 3, 7]), np.array([0, 1, 0, 1])
    got = cache.read(rows, views)
    assert sorted(prefix.calls) == [(1, 1), (3, 0), (7, 1)]  # the duplicate (3, 0) computed once
    np.testing.assert_array_equal(got, np.stack([feature(i, v) for i, v in zip(rows, views, strict=True)]))
    prefix.calls.clear()
    again = cache.read(np.array([7, 3]), np.array([1, 0]))
    assert prefix.calls == []  # read back from the file
    np.testing.assert_array_equal(again, np.stack([feature(7, 1), feature(3, 0)]))
    assert not cache.complete
    cache.close()


def test_marks_survive_the_process_and_only_marked_rows_are_reused(tmp_path: Path) -> None:
    first = FeatureCache("k", N, VIEWS, Prefix(), 4, tmp_path)
    first.read(np.array([0, 5]), np.array([0, 1]))
    first.close()
    meta = json.loads((tmp_path / "features" / "k.json").read_text())
    assert meta["shape"] == [N, VIEWS, *SHAPE]
    prefix = Prefix()
    second = FeatureCache("k", N, VIEWS, prefix, 4, tmp_path)
    assert second.filled.sum() == 2 and second.filled[0, 0] and second.filled[5, 1]
    got = second.read(np.array([0, 5, 6]), np.array([0, 1, 0]))
    assert prefix.calls == [(6, 0)]
    np.testing.assert_array_equal(got[2], feature(6, 0))
    second.close()


def test_rows_written_but_not_marked_are_computed_again(tmp_path: Path) -> None:
    """A run killed after writing rows but before marking them: the rows are never read back."""
    first = FeatureCache("k", N, VIEWS, Prefix(), 4, tmp_path)
    first.read(np.array([2]), np.array([0]))
    first.close()
    killed = FeatureCache("k", N, VIEWS, Prefix(), 4, tmp_path)
    killed.read(np.array([4]), np.array([1]))
    killed._dirty = False  # killed before its flush: row 4 is in the file, unmarked
    killed.close()
    data = tmp_path / "features" / "k.f32"
    raw = np.fromfile(data, np.float32).reshape(N, VIEWS, *SHAPE)
    raw[4, 1] = -1.0  # whatever the killed run left there
    raw.tofile(data)
    prefix = Prefix()
    third = FeatureCache("k", N, VIEWS, prefix, 4, tmp_path)
    np.testing.assert_array_equal(third.read(np.array([4]), np.array([1]))[0], feature(4, 1))
    assert prefix.calls == [(4, 1)]
    third.close()


def test_fill_all_completes_the_cache_and_a_complete_cache_is_read_only(tmp_path: Path) -> None:
    cache = FeatureCache("k", N, VIEWS, Prefix(), 3, tmp_path)
    seen = []
    cache.fill_all(seen.append)
    assert cache.complete and sum(seen) == N * VIEWS  # pairs computed
    cache.close()
    prefix = Prefix()
    reused = FeatureCache("k", N, VIEWS, prefix, 3, tmp_path)
    assert reused.complete
    (tmp_path / "features" / "k.f32").chmod(0o444)
    all_rows = np.repeat(np.arange(N), VIEWS)
    all_views = np.tile(np.arange(VIEWS), N)
    got = reused.read(all_rows, all_views)
    assert prefix.calls == []
    np.testing.assert_array_equal(got[5], feature(2, 1))
    reused.close()


@pytest.mark.parametrize("other", [{"shape": [N + 1, VIEWS, *SHAPE]}, "not json"])
def test_a_mismatched_or_corrupt_bitmap_is_not_trusted(tmp_path: Path, other) -> None:
    folder = tmp_path / "features"
    folder.mkdir()
    (folder / "k.f32").write_bytes(b"\0" * 64)
    (folder / "k.json").write_text(json.dumps(other) if isinstance(other, dict) else other)
    prefix = Prefix()
    cache = FeatureCache("k", N, VIEWS, prefix, 4, tmp_path)
    assert not cache.filled.any()
    np.testing.assert_array_equal(cache.read(np.array([9]), np.array([1]))[0], feature(9, 1))
    assert prefix.calls == [(9, 1)]
    cache.close()


def test_a_feature_does_not_depend_on_which_batch_or_process_computed_it_first(tmp_path: Path) -> None:
    """Every prefix call has the cache's batch size (a short chunk padded with its own pairs, the padding dropped),
    so two trials filling one cache at once in their own batch orders (`compare --jobs`) leave the same values as
    one trial filling it alone."""
    alone = SizeSensitivePrefix()
    one = FeatureCache("alone", N, VIEWS, alone, 4, tmp_path)
    one.fill_all()
    one.close()
    first, second = SizeSensitivePrefix(), SizeSensitivePrefix()
    a = FeatureCache("shared", N, VIEWS, first, 4, tmp_path)
    b = FeatureCache("shared", N, VIEWS, second, 4, tmp_path)
    a.read(np.array([3, 1, 3, 7, 0]), np.array([0, 1, 0, 1, 0]))  # 4 distinct pairs, then a lone one
    a.flush()
    b.read(np.array([3, 2]), np.array([0, 1]))  # (3, 0) is a's: only (2, 1) is computed, padded to 4
    b.flush()
    a.fill_all()
    b.fill_all()
    assert set(first.sizes + second.sizes + alone.sizes) == {4}
    files = tmp_path / "features"
    expected = np.stack([[feature(i, v) + 4e-6 for v in range(VIEWS)] for i in range(N)])
    for key in ("alone", "shared"):
        np.testing.assert_array_equal(np.fromfile(files / f"{key}.f32", np.float32).reshape(expected.shape), expected)
    a.close()
    b.close()


def test_splits_of_one_image_cache_share_its_rows(tmp_path: Path) -> None:
    """The folds of `compare --folds` are subsets of one pooled image cache: a split reads image-cache rows through
    its positions, fills only its own rows (val: only the unflipped view), and a later split computes only the
    images no earlier one did."""
    prefix = Prefix()
    first_train = SplitFeatures(FeatureCache("pool", N, VIEWS, prefix, 4, tmp_path), np.array([0, 2, 4, 6, 8]), (0, 1))
    first_val = SplitFeatures(FeatureCache("pool", N, VIEWS, prefix, 4, tmp_path), np.array([1, 3, 5, 7, 9]), (0,))
    np.testing.assert_array_equal(
        first_train.read(np.array([1, 4]), np.array([1, 0])), np.stack([feature(2, 1), feature(8, 0)])
    )
    first_train.fill_all()
    first_val.fill_all()
    assert first_train.complete and first_val.complete and first_val.missing() == 0
    assert sorted(prefix.calls) == sorted(
        [(i, v) for i in range(0, N, 2) for v in (0, 1)] + [(i, 0) for i in range(1, N, 2)]
    )
    first_train.close()
    first_val.close()
    prefix.calls.clear()
    second_train = SplitFeatures(FeatureCache("pool", N, VIEWS, prefix, 4, tmp_path), np.array([1, 2, 3, 4]), (0, 1))
    assert second_train.missing() == 2 and not second_train.complete  # rows 1 and 3 in view 1: val never flipped them
    second_train.fill_all()
    assert sorted(prefix.calls) == [(1, 1), (3, 1)]
    np.testing.assert_array_equal(
        second_train.read(np.array([0, 3]), np.array([1, 1])), np.stack([feature(1, 1), feature(4, 1)])
    )
    second_train.close()


def test_a_split_whose_rows_are_filled_reads_a_read_only_file(tmp_path: Path) -> None:
    """A val split never fills the mirror views, other folds' images stay empty: the file is never complete, yet a
    split whose own rows are all filled only reads it (a cache in a read-only shared folder), and opens it to write
    only when one of its rows is missing."""
    first = SplitFeatures(FeatureCache("k", N, VIEWS, Prefix(), 4, tmp_path), np.arange(5), (0,))
    first.fill_all()
    first.close()
    (tmp_path / "features" / "k.f32").chmod(0o444)
    prefix = Prefix()
    again = SplitFeatures(FeatureCache("k", N, VIEWS, prefix, 4, tmp_path), np.arange(5), (0,))
    assert again.complete and not again.store.complete
    np.testing.assert_array_equal(again.read(np.array([4]), np.array([0]))[0], feature(4, 0))
    assert prefix.calls == [] and not again.store._writable
    again.close()
    (tmp_path / "features" / "k.f32").chmod(0o644)
    more = SplitFeatures(FeatureCache("k", N, VIEWS, prefix, 4, tmp_path), np.arange(7), (0,))
    got = more.read(np.array([0, 6]), np.array([0, 0]))
    np.testing.assert_array_equal(got, np.stack([feature(0, 0), feature(6, 0)]))
    assert prefix.calls == [(6, 0)] and more.store._writable
    more.close()
