"""Copies of an image across splits, which inflate accuracy on the later split. `find_leakage` is the cheap check
training runs: file sizes first, then hashes of only the files whose size occurs in another split. `near_copies`
(`thawline data check`) finds resized or re-encoded copies by their small grayscale thumbnails.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Collection

from thawline.core.errors import ThawlineError
from thawline.data.discovery import Discovered
from thawline.data.files import SPLITS

# Near copies across splits (a resized or re-encoded image): 16x16 grayscale thumbnails within this RMS difference,
# in levels of 255. Copies made by resizing to half and JPEG quality 50-85 measured 1.5-2.2; the closest distinct
# images of the suite's Fashion-MNIST, shapes and photo tasks 5.2-8.8.
THUMB = 16
NEAR_RMS = 3.0
NEAR_BLOCK = 256  # later-split thumbnails compared at once: 54,000 x 256 float32 distances, 55 MB


# ---------------------------------------------------------------------------------------------- fast leakage


def _sha1_file(path: str) -> str | None:
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def find_leakage(discovered: Discovered, only: Collection[str] | None = None) -> list[tuple[str, str, str, str]]:
    """(split_a, path_a, split_b, path_b) for each file in a later split that is byte-identical to one in an earlier
    split (train < val < test), among `only` (the images that decode) when given. Only files whose size also occurs
    in another split are read, so this is cheap."""
    by_size: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for split in sorted(discovered.splits, key=SPLITS.index):
        for path in discovered.splits[split].paths:
            if only is not None and path not in only:
                continue
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            if size:
                by_size[size].append((split, path))
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for files in by_size.values():
        if len({s for s, _ in files}) < 2:
            continue
        for split, path in files:
            digest = _sha1_file(path)
            if digest is not None:
                by_hash[digest].append((split, path))
    leaks: list[tuple[str, str, str, str]] = []
    for files in by_hash.values():
        if len({s for s, _ in files}) < 2:
            continue
        first_split, first_path = files[0]  # files are in split order, then path order
        leaks.extend((first_split, first_path, s, p) for s, p in files if s != first_split)
    return sorted(leaks, key=lambda t: (SPLITS.index(t[2]), t[3]))


def leakage_message(leaks: list[tuple[str, str, str, str]], root: str | os.PathLike) -> str:
    """One line: how many files leak, one example, and what to do."""
    split_a, path_a, split_b, path_b = leaks[0]
    where = "/".join(sorted({b for _, _, b, _ in leaks}, key=SPLITS.index))
    return (
        f"{len(leaks)} file(s) in {where} are byte-identical to files in an earlier split "
        f"(e.g. '{path_b}' = '{path_a}'), which inflates accuracy on {where}; remove the copies "
        f"(`thawline data check {root}` lists them all) or pass --allow-leakage"
    )


def check_leakage(discovered: Discovered, allow: bool = False, only: Collection[str] | None = None) -> str | None:
    """Raise ThawlineError when val/test files duplicate earlier splits; with `allow`, return a warning instead."""
    leaks = find_leakage(discovered, only)
    if not leaks:
        return None
    message = leakage_message(leaks, discovered.root)
    if not allow:
        raise ThawlineError(message)
    return message.replace(" or pass --allow-leakage", " (allowed by --allow-leakage)")


def near_copies(thumbs: dict[str, list[tuple[str, str, bytes]]]) -> list[tuple[str, str, float]]:
    """Pairs across splits ({split: [(path, sha1, thumbnail)]}, earlier split first) whose thumbnails differ by at
    most NEAR_RMS levels RMS but whose bytes differ (identical bytes are leakage already): every pair compared, in
    blocks (54,000 + 6,000 + 10,000 thumbnails: 8-9 s here)."""
    import numpy as np

    out: list[tuple[str, str, float]] = []
    names = [s for s in SPLITS if thumbs.get(s)]
    arrays = {
        s: np.frombuffer(b"".join(t for _, _, t in thumbs[s]), np.uint8).reshape(-1, THUMB * THUMB) for s in names
    }
    limit = NEAR_RMS**2 * THUMB * THUMB
    for i, early in enumerate(names):
        # centred on 128 and a 10% margin: the float32 sums stay far inside their precision, and every candidate
        # is decided exactly from the uint8 values below
        a = arrays[early].astype(np.float32) - 128
        a_sq = (a * a).sum(1)
        for late in names[i + 1 :]:
            for start in range(0, len(arrays[late]), NEAR_BLOCK):
                b = arrays[late][start : start + NEAR_BLOCK].astype(np.float32) - 128
                d2 = a_sq[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
                for x, y in zip(*np.nonzero(d2 <= 1.1 * limit), strict=True):
                    (pa, ha, ta), (pb, hb, tb) = thumbs[early][x], thumbs[late][start + y]
                    if ha != hb:
                        diff = np.frombuffer(ta, np.uint8).astype(np.int32) - np.frombuffer(tb, np.uint8)
                        rms = float(np.sqrt((diff * diff).mean()))
                        if rms <= NEAR_RMS:
                            out.append((pa, pb, round(rms, 2)))
    return sorted(out, key=lambda t: (t[2], t[0], t[1]))
