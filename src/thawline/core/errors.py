"""User-facing errors: one line naming the input and the fix, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ThawlineError(Exception):
    """An error caused by the user's input. The CLI prints `thawline: <message>` and exits 2."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' (did you mean: a, b?)' suffix listing the closest known names, or '' when none is close."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""
