"""What data a run (or a comparison) was trained on, so that `--resume` never mixes two data sets.

A run folder's `data.csv` lists every file of every split as discovered when the run started: split, path relative
to the data folder, class name and content key (`splits._content_key`: a hash of the size and the first and last
16 KiB, all of a small file; the key the held-out splits are drawn by). A resume compares it with the data as
discovered now and refuses another data set in one line that says what changed per split. Keys hash bytes, never
times: touching a file's mtime changes nothing. A folder written before data.csv existed resumes as before.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from thawline.core.atomic import write_bytes_atomic
from thawline.core.errors import ThawlineError
from thawline.core.runformat import DATA_FILE
from thawline.data.discovery import Discovered
from thawline.data.files import SPLITS, printable
from thawline.data.splits import _content_key

HEADER = ["split", "path", "label", "key"]
Entry = tuple[str, str]  # (class name, content key in hex)


@dataclass
class Fingerprint:
    """Per split: {path relative to the data folder: (class name, content key)}."""

    splits: dict[str, dict[str, Entry]] = field(default_factory=dict)
    _digests: dict[str, str] | None = field(default=None, repr=False, compare=False)

    def digests(self) -> dict[str, str]:
        """A short hash per split (config.yaml and summary.json record it): equal digests, equal files."""
        if self._digests is not None:  # asked for by every config.yaml a run writes
            return dict(self._digests)
        out = {}
        for split, files in self.splits.items():
            h = hashlib.blake2b(digest_size=8)
            for path in sorted(files):
                label, key = files[path]
                h.update(f"{path}\0{label}\0{key}\n".encode("utf-8", "surrogateescape"))
            out[split] = h.hexdigest()
        self._digests = out
        return dict(out)

    def to_csv(self) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(HEADER)
        for split in self.splits:
            for path in sorted(self.splits[split]):
                w.writerow([split, path, *self.splits[split][path]])
        return buf.getvalue().encode("utf-8", "surrogateescape")  # file names that are not UTF-8 kept as bytes


def build(root: Path, splits: dict[str, tuple[Iterable[str], Iterable[int]]], classes: list[str]) -> Fingerprint:
    """The fingerprint of `splits` ({split: (paths, labels)}, as `data.discover` found them under `root`)."""
    fp = Fingerprint()
    for split, (paths, labels) in splits.items():
        fp.splits[split] = {relative(p, root): (classes[label], _content_key(p).hex()) for p, label in
                            zip(paths, labels, strict=True)}  # fmt: skip
    return fp


def of_discovered(found: Discovered) -> Fingerprint:
    """The fingerprint of the files `data.discover` found (those of `--max-per-class` only, when given)."""
    return build(found.root, {name: (f.paths, f.labels) for name, f in found.splits.items()}, found.classes)


def resplit(fp: Fingerprint, root: Path, splits: dict[str, Iterable[str]]) -> Fingerprint:
    """The fingerprint of `splits` ({split: paths under `root`}) from the entries `fp` already holds for those paths
    under any split: the folds of a pool without reading a file again."""
    entries = {rel: entry for files in fp.splits.values() for rel, entry in files.items()}
    out = Fingerprint()
    for split, paths in splits.items():
        out.splits[split] = {rel: entries[rel] for rel in (relative(p, root) for p in paths)}
    return out


def relative(path: str, root: Path) -> str:
    try:
        rel = os.path.relpath(path, root)
    except ValueError:  # another drive (Windows): the path as is
        rel = path
    return rel.replace(os.sep, "/")


def write(folder: Path, fp: Fingerprint) -> None:
    """`folder/data.csv`, written atomically: a resume never reads half of it."""
    write_bytes_atomic(folder / DATA_FILE, fp.to_csv())


def read(folder: Path) -> Fingerprint | None:
    """The fingerprint recorded in `folder`, or None when it has none (a folder written before data.csv existed)."""
    path = folder / DATA_FILE
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ThawlineError(f"cannot read '{path}' ({e.strerror}); make it readable, or pass a new --out") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0] != HEADER or any(len(r) != len(HEADER) for r in rows[1:]):
        raise ThawlineError(f"'{path}' is not a thawline data list (split,path,label,key); restore it from the run "
                            "or pass a new --out")  # fmt: skip
    fp = Fingerprint()
    for split, rel, label, key in rows[1:]:
        fp.splits.setdefault(split, {})[rel] = (label, key)
    return fp


def differences(saved: Fingerprint, now: Fingerprint) -> tuple[list[str], str | None]:
    """(per split: 'val 3 removed, 2 added', ...; one example 'val/x.png removed'), empty when the data is the same.
    A file under another name with the same bytes and class counts as renamed (the batches' order changes)."""
    parts: list[str] = []
    example: str | None = None
    for split in [*SPLITS, *sorted((set(saved.splits) | set(now.splits)) - set(SPLITS))]:
        old, new = saved.splits.get(split, {}), now.splits.get(split, {})
        removed = sorted(set(old) - set(new))
        added = sorted(set(new) - set(old))
        changed = sorted(p for p in set(old) & set(new) if old[p] != new[p])
        pool: dict[Entry, list[str]] = {}
        for p in removed:
            pool.setdefault(old[p], []).append(p)
        renamed: list[str] = []
        moved: set[str] = set()  # removed paths whose bytes reappear under another name
        for p in added:
            if pool.get(new[p]):
                renamed.append(p)
                moved.add(pool[new[p]].pop())
        removed = [p for p in removed if p not in moved]
        kept_added = set(added) - set(renamed)
        added = [p for p in added if p in kept_added]
        kinds = [
            (removed, "removed", ""),
            (added, "added", ""),
            (changed, "changed", " (same path, other bytes or class)"),
            (renamed, "renamed", " (same bytes, other path)"),
        ]
        said = [f"{len(files)} {what}{why}" for files, what, why in kinds if files]
        if said:
            parts.append(f"{split} {', '.join(said)}")
        if example is None:
            example = next((f"'{printable(files[0])}' {what}" for files, what, _ in kinds if files), None)
    return parts, example


def check_same_data(folder: Path, now: Fingerprint, subject: str | None = None) -> None:
    """Refuse resuming `folder` on data other than its data.csv lists, in one line naming the changes per split
    (`subject`: how the line starts, "'<folder>' was trained" unless given). Nothing to check in a folder without
    data.csv (written before it existed): it resumes as before."""
    saved = read(folder)
    if saved is None:
        return
    parts, example = differences(saved, now)
    if parts:
        subject = subject or f"'{folder}' was trained"
        raise ThawlineError(
            f"{subject} on other data: {'; '.join(parts)} (e.g. {example}); "
            "resume with the data it was trained on, or pass a new --out"
        )
