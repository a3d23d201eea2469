"""Classification metrics over label/prediction arrays (numpy only) and a reader for a run's predictions.csv.

Labels and predictions are integer class indices in [0, num_classes). Divisions by zero (a class that is never
predicted, or has no samples) give 0.0, as scikit-learn does with `zero_division=0`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thawline.core.atomic import OUT_ELSEWHERE, write_text_atomic
from thawline.core.config import shown
from thawline.core.errors import ThawlineError
from thawline.data.files import printable

PREDICTION_COLUMNS = ("split", "path", "label", "pred", "confidence", "loss", "correct")


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of predictions equal to the label; NaN when there are none."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape:
        raise ValueError(f"labels and preds differ in shape: {labels.shape} vs {preds.shape}")
    return float(np.mean(labels == preds)) if labels.size else float("nan")


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, shape (num_classes, num_classes): row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels and preds differ in shape: {labels.shape} vs {preds.shape}")
    if labels.size and (min(labels.min(), preds.min()) < 0 or max(labels.max(), preds.max()) >= num_classes):
        raise ValueError(f"class index outside [0, {num_classes})")
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def row_normalize(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall view of a confusion matrix); empty rows stay zero."""
    cm = np.asarray(cm, dtype=np.float64)
    sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)


def most_confused(cm: np.ndarray, limit: int = 10) -> list[tuple[int, int, int, float]]:
    """The largest off-diagonal cells, (true, predicted, count, share of the true class's images), most first;
    ties by class index. fastai's `most_confused`: readable whatever the number of classes."""
    cm = np.asarray(cm, dtype=np.int64)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    true, pred = np.nonzero(off)
    order = sorted(zip(true.tolist(), pred.tolist(), strict=True), key=lambda tp: (-off[tp], tp))[:limit]
    sums = cm.sum(axis=1)
    return [(t, p, int(off[t, p]), float(off[t, p] / sums[t])) for t, p in order]


@dataclass
class ClassMetrics:
    """Per-class precision, recall, F1 and support (arrays of length num_classes) plus their averages."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    predicted: np.ndarray | None = None  # how often each class was predicted

    def macro(self) -> dict[str, float]:
        """Unweighted means over the classes that occur in the labels or the predictions (scikit-learn's default):
        a class a folder has no image of, and that nothing was predicted as, has no recall to average in."""
        seen = self.support > 0
        if self.predicted is not None:
            seen |= self.predicted > 0
        return {
            "precision": float(self.precision[seen].mean()) if seen.any() else 0.0,
            "recall": float(self.recall[seen].mean()) if seen.any() else 0.0,
            "f1": float(self.f1[seen].mean()) if seen.any() else 0.0,
            "support": int(self.support.sum()),
            "classes": int(seen.sum()),
        }

    def weighted(self) -> dict[str, float]:
        total = int(self.support.sum())
        w = self.support / total if total else np.zeros_like(self.support, dtype=np.float64)
        return {
            "precision": float((self.precision * w).sum()),
            "recall": float((self.recall * w).sum()),
            "f1": float((self.f1 * w).sum()),
            "support": total,
        }


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_metrics(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> ClassMetrics:
    cm = confusion_matrix(labels, preds, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return ClassMetrics(precision, recall, f1, support.astype(np.int64), predicted.astype(np.int64))


@dataclass
class Calibration:
    """Reliability bins over [0, 1] of confidence and the expected calibration error they give.

    For bin b: count[b] samples, mean confidence conf[b] and accuracy acc[b] (both 0 for an empty bin).
    ECE = sum_b count[b] / n * |acc[b] - conf[b]|.
    """

    edges: np.ndarray
    count: np.ndarray
    conf: np.ndarray
    acc: np.ndarray
    ece: float
    mce: float = 0.0  # largest gap over the non-empty bins
    n: int = field(default=0)


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> Calibration:
    """Equal-width reliability bins; a confidence of exactly 1.0 falls in the last bin."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence and correct differ in shape: {confidence.shape} vs {correct.shape}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf = _safe_div(np.bincount(idx, weights=confidence, minlength=n_bins), count)
    acc = _safe_div(np.bincount(idx, weights=correct, minlength=n_bins), count)
    n = int(confidence.size)
    gaps = np.abs(acc - conf)
    ece = float((count / n * gaps).sum()) if n else 0.0
    mce = float(gaps[count > 0].max()) if n else 0.0
    return Calibration(edges, count, conf, acc, ece, mce, n)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    return calibration(confidence, correct, n_bins).ece


@dataclass
class Predictions:
    """The rows of a run's predictions.csv as arrays; labels/preds index into `classes`."""

    classes: list[str]
    split: str
    paths: list[str]
    labels: np.ndarray
    preds: np.ndarray
    confidence: np.ndarray
    loss: np.ndarray
    correct: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_predictions(path: str | Path, classes: list[str] | None = None) -> Predictions:
    """Read predictions.csv. `classes` (summary.json's list) fixes the class order; without it the sorted names
    found in the file are used. A malformed file raises ThawlineError naming it."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in PREDICTION_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ThawlineError(f"{path}: missing column(s) {', '.join(missing)}; expected {PREDICTION_COLUMNS}")
            rows = list(reader)
    except OSError as e:
        raise ThawlineError(f"cannot read {path} ({e.strerror})") from None
    if classes is None:
        classes = sorted({r["label"] for r in rows} | {r["pred"] for r in rows})
    # the file holds names as files.printable wrote them (control characters escaped); a class is found either way
    index = {**{printable(c): i for i, c in enumerate(classes)}, **{c: i for i, c in enumerate(classes)}}
    try:
        labels = np.array([index[r["label"]] for r in rows], dtype=np.int64)
        preds = np.array([index[r["pred"]] for r in rows], dtype=np.int64)
    except KeyError as e:
        raise ThawlineError(f"{path}: class {shown(e.args[0])} is not among the run's classes") from None
    try:
        confidence = np.array([float(r["confidence"]) for r in rows], dtype=np.float64)
        loss = np.array([float(r["loss"]) for r in rows], dtype=np.float64)
        correct = np.array([int(r["correct"]) for r in rows], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ThawlineError(f"{path}: non-numeric confidence/loss/correct value ({e})") from None
    splits = sorted({r["split"] for r in rows})
    return Predictions(
        classes=list(classes),
        split="+".join(splits) if splits else "",
        paths=[r["path"] for r in rows],
        labels=labels,
        preds=preds,
        confidence=confidence,
        loss=loss,
        correct=correct,
    )


def write_predictions(
    path: str | Path,
    split: str,
    paths: list[str],
    labels: np.ndarray,
    logits: np.ndarray,
    classes: list[str],
    elsewhere: str = OUT_ELSEWHERE,
) -> None:
    """predictions.csv (PREDICTION_COLUMNS) from logits: the one writer for training, `evaluate` and the report."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    top = logits.max(axis=1, keepdims=True) if len(logits) else np.zeros((0, 1))
    log_norm = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]  # log-sum-exp per row
    pred = logits.argmax(axis=1) if len(logits) else np.zeros(0, np.int64)
    confidence = np.exp(top[:, 0] - log_norm)
    loss = log_norm - logits[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(PREDICTION_COLUMNS)
    names = [printable(c) for c in classes]  # a name's control characters escaped: the file is read in terminals too
    for i, p in enumerate(paths):
        y, yhat = int(labels[i]), int(pred[i])
        row = [printable(split), printable(p), names[y], names[yhat], f"{confidence[i]:.6f}", f"{loss[i]:.6f}"]
        w.writerow([*row, int(y == yhat)])
    write_text_atomic(path, buf.getvalue(), elsewhere)  # `elsewhere`: the fix a failed write names
