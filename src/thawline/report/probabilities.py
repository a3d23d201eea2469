"""A run's full class probabilities (`probabilities.npz`): the best weights on val and, when there is one, test.
What cross-validation pools into out-of-fold predictions and what an ensemble averages. numpy only.

    write_probabilities(path, {"val": (paths, labels, logits), ...})
    read_probabilities(path) -> {"val": SplitProbabilities, ...}
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thawline.core.atomic import write_bytes_atomic
from thawline.core.errors import ThawlineError


@dataclass(frozen=True)
class SplitProbabilities:
    paths: list[str]
    labels: np.ndarray  # int64, (n,)
    probs: np.ndarray  # float64, (n, classes): softmax of the logits, rows summing to 1

    def __len__(self) -> int:
        return len(self.paths)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True) if len(z) else z
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True) if len(z) else e


def write_probabilities(path: str | Path, splits: dict[str, tuple[list[str], np.ndarray, np.ndarray]]) -> None:
    """`path` (.npz, written atomically): per split its paths, labels and softmax probabilities (float32: 4 bytes a
    class an image)."""
    arrays: dict[str, np.ndarray] = {}
    for split, (paths, labels, logits) in splits.items():
        arrays[f"{split}_paths"] = np.array(paths, dtype=np.str_)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
        arrays[f"{split}_probs"] = softmax(logits).astype(np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def read_probabilities(path: str | Path) -> dict[str, SplitProbabilities]:
    """{split: its paths, labels and probabilities} from a probabilities.npz; one line naming a damaged file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            splits = sorted({k.rsplit("_", 1)[0] for k in npz.files})
            return {
                s: SplitProbabilities(
                    [str(p) for p in npz[f"{s}_paths"]],
                    npz[f"{s}_labels"].astype(np.int64),
                    npz[f"{s}_probs"].astype(np.float64),
                )  # fmt: skip
                for s in splits
            }
    except FileNotFoundError:
        raise ThawlineError(f"'{path}' not found: the run finished before its probabilities were saved; rerun it "
                            "(compare --resume trains what is missing)") from None  # fmt: skip
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ThawlineError(f"'{path}' is damaged ({e}); delete the run folder and resume the comparison") from None
