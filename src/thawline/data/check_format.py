"""`thawline data check`'s output: the scan's result as a compact text report (leakage first) or as JSON, and
the command itself (`check_folder`, exit 1 when something needs fixing)."""

from __future__ import annotations

import json
import os

from thawline.data.check import CheckResult, scan

SHOWN = 20  # items listed per section of the text report (--json lists all)


# ---------------------------------------------------------------------------------------------- report


def format_result(r: CheckResult) -> str:
    """A compact human-readable report; leakage first, as it silently inflates every accuracy number."""
    lines = [f"data check: {r.root}"]
    if r.leakage:
        bar = "!" * 78
        lines += [
            bar,
            f"!! LEAKAGE: {r.leaked_files} file(s) in val/test are byte-identical to files in an earlier split.",
            "!! Accuracy measured on them is inflated; remove the copies from val/ or test/.",
        ]
        for g in r.leakage[:SHOWN]:
            lines.append("!!   " + " = ".join(f"{p}" for _, _, p in g.files))
        if len(r.leakage) > SHOWN:
            lines.append(f"!!   ... and {len(r.leakage) - SHOWN} more groups (--json lists all)")
        lines.append(bar)

    header = ["split", "classes", "images", "bad", "ignored", "min/class", "max/class", "imbalance"]
    rows = []
    for s in r.splits:
        present = [n for n in r.counts[s].values() if n > 0]
        rows.append(
            [
                s,
                str(len(r.counts[s])),
                str(sum(r.counts[s].values())),
                str(sum(b.split == s for b in r.bad_files)),
                str(sum(b.split == s for b in r.ignored_files)),
                str(min(r.counts[s].values(), default=0)),
                str(max(present, default=0)),
                f"{r.imbalance[s]:g}x" if s in r.imbalance else "-",
            ]
        )
    lines += ["", *_table(header, rows)]

    class_rows = [[c] + [str(r.counts[s].get(c, "-")) for s in r.splits] for c in r.classes]
    lines += ["", *_table(["class", *r.splits], class_rows[: SHOWN * 5])]
    if len(class_rows) > SHOWN * 5:
        lines.append(f"... and {len(class_rows) - SHOWN * 5} more classes (--json lists all)")

    if r.sizes:
        w, h = r.sizes["width"], r.sizes["height"]
        lines.append("")
        lines.append(f"sizes (min/median/max): width {w[0]}/{w[1]}/{w[2]}, height {h[0]}/{h[1]}/{h[2]}")
        lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in r.modes.items()))

    def listing(title: str, items: list[str]) -> None:
        if items:
            lines.extend(["", f"{title} ({len(items)}):"])
            lines.extend(f"  {i}" for i in items[:SHOWN])
            if len(items) > SHOWN:
                lines.append(f"  ... and {len(items) - SHOWN} more (--json lists all)")

    listing("bad files", [f"{b.path}: {b.reason}" for b in r.bad_files])
    listing("ignored", [f"{b.path}: {b.reason}" for b in r.ignored_files])
    listing("duplicates within a split", [" = ".join(p for _, _, p in g.files) for g in r.duplicates])
    listing(
        "near copies across splits", [f"{a} ~ {b} (thumbnails {rms:g} levels apart)" for a, b, rms in r.near_copies]
    )
    listing("warnings", r.warnings)
    listing("problems (need fixing)", r.problems)
    lines.append("")
    lines.append("OK: nothing needs fixing" if r.ok else f"{len(r.problems)} problem(s) need fixing")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]

    def fmt(row: list[str]) -> str:
        cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(cells).rstrip()

    return [fmt(header), *(fmt(r) for r in rows)]


def check_folder(dir: str | os.PathLike, as_json: bool = False) -> int:
    """`thawline data check DIR [--json]`: print the report; 1 when something needs fixing, else 0."""
    import sys

    from tqdm import tqdm

    with tqdm(desc="check", unit="file", disable=not sys.stderr.isatty(), leave=False) as bar:
        result = scan(dir, progress=bar.update)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_result(result))
    return 0 if result.ok else 1
