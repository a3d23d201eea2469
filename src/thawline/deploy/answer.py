"""A cross-validated comparison's delivered answer as one model: every fold model of every member, their softmax
probabilities averaged with the answer's weights (a member's weight shared by its K fold models). `load_run` gives
it for a compare folder with an answer, so `predict`, `evaluate` and `export` (one ONNX graph) use it as a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thawline.core.errors import ThawlineError
from thawline.core.runformat import COMPARISON_JSON, FOLD_PREFIX
from thawline.data.names import folder_name


class AnswerEnsemble(nn.Module):
    """The weighted mean of its models' softmax probabilities; the output is its log, so a softmax of it is those
    probabilities and every caller reads it as it reads a model's logits."""

    def __init__(self, models: list[nn.Module], weights: list[float]) -> None:
        super().__init__()
        if len(models) != len(weights) or not models:
            raise ValueError("one weight per model, at least one model")
        self.members = nn.ModuleList(models)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / float(sum(weights)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sum(w * torch.softmax(m(x).float(), dim=1) for m, w in zip(self.members, self.weights, strict=True))
        return torch.log(torch.clamp(probs, min=1e-12))  # type: ignore[arg-type]


def read_answer(folder: Path) -> dict[str, Any] | None:
    """The `answer` of a compare folder's comparison.json (compare --folds), or None (a run, a plain compare)."""
    path = folder / COMPARISON_JSON
    if not folder.is_dir() or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ThawlineError(f"cannot read '{path}' ({e}); rerun the comparison with --resume") from None
    answer = doc.get("answer") if isinstance(doc, dict) else None
    return answer if isinstance(answer, dict) else None


def member_runs(folder: Path, answer: dict[str, Any]) -> list[tuple[Path, float]]:
    """(fold run folder, weight) of every fold model of the answer: found under `folder` (a moved compare folder
    works), else at the recorded path."""
    out: list[tuple[Path, float]] = []
    for name, weight in answer["members"].items():
        recorded = answer.get("runs", {}).get(name) or []
        k = len(recorded) or int(answer.get("forward_passes", 0) // max(1, len(answer["members"])))
        for i in range(k):
            inside = folder / folder_name(name) / f"{FOLD_PREFIX}{i + 1}"
            run = inside if inside.is_dir() or i >= len(recorded) else Path(recorded[i])
            if not run.is_dir():
                raise ThawlineError(f"the answer's member '{name}' has no fold run '{inside}'; restore the compare "
                                    "folder, or pass one of its run folders")  # fmt: skip
            out.append((run, float(weight) / k))
    return out
