"""Names that become folder names (strategies, models of a grid, seeds): one check, so a name is never a path.

No torch here."""

from __future__ import annotations

import re

from thawline.core.errors import ThawlineError
from thawline.data.files import printable

# A letter or digit first, then letters, digits and . _ + = - : never a separator, never '.' or '..', never hidden.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")


def check_name(name: str, what: str, fix: str) -> str:
    """`name` when it is safe as a folder name, else one line naming it, what it names and `fix`."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ThawlineError(
            f"{what} {printable(repr(name)) if isinstance(name, str) else repr(name)} cannot name a folder: use "
            f"letters, digits and . _ + = - (starting with a letter or digit, at most 100 characters); {fix}"
        )
    return name


def folder_name(name: str) -> str:
    """The folder of a strategy or model name: the name itself when safe; a built-in spelling with '/' or ':'
    (`partial-2/3`, a hub model `timm/resnet50.a1_in1k`) with each run of other characters as '_'."""
    folder = re.sub(r"[^A-Za-z0-9._+=-]+", "_", name).strip(".")
    return folder if SAFE_NAME.fullmatch(folder) else "_" + folder.lstrip("_")[:99] if folder else "_"
