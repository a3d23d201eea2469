"""MkDocs hook: the measurement tables are generated from benchmarks/records/*.json before every build (`mkdocs build`,
`mkdocs serve`, `make docs`), so a page never shows a table that its record does not hold."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def on_pre_build(config: Any, **kwargs: Any) -> None:
    path = Path(__file__).with_name("gen_tables.py")
    spec = importlib.util.spec_from_file_location("thawline_docs_gen_tables", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate()
