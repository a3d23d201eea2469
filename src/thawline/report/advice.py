"""The advisor's output files with no torch: advise.json's names and format, `Advice` (what `thawline.advise`
returns), reading advise.json, and its console text, report section and advise.html (`thawline.comparing.advise`
writes them; the report reads them)."""

from __future__ import annotations

import html
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# far_behind and FAR_BEHIND are read off the module, so a test that sets advice_rules.FAR_BEHIND moves every reader
from thawline.report import advice_rules

ADVICE_JSON = "advise.json"
ADVICE_HTML = "advise.html"
FIGURE = "advise_probes.png"
ADVICE_DIR = "advise"  # `compare --advise` writes its prediction into this sub-folder, before any training
SKIPPED_JSON = "skipped.json"  # `compare --advise`: {strategy: why} of the strategies it left out (far_behind)
FORMAT = 1


@dataclass
class Advice:
    out_dir: Path
    doc: dict[str, Any]  # what advise.json holds

    @property
    def ranking(self) -> list[str]:
        return [r["strategy"] for r in self.doc["ranking"]]

    @property
    def recommendation(self) -> dict[str, Any]:
        return self.doc["recommendation"]

    @property
    def seconds(self) -> float:
        return float(self.doc["seconds"]["total"])


def format_advice(doc: dict[str, Any]) -> str:
    """The console text: signals per stage, the predicted ranking with scores, the recommendation and reasons."""
    s = doc["sampled"]
    lines = [
        f"advise: {doc['model']} on {doc['data']} ({s['train']} of {doc['num_train']} train, {s['val']} of "
        f"{doc['num_val']} val images, {doc['img_size']} px, {doc['device']})",
        f"{'stage':<12} {'dim':>5} {'linear':>7} {'k-NN':>7} {'LogME':>8} {'||g||/||w||':>12}",
    ]
    for d in doc["signals"]["depths"]:
        rgn = f"{d['rgn']:.2e}" if d["rgn"] is not None else "-"
        lines.append(
            f"{d['stage']:<12} {d['dim']:>5} {d['linear_acc']:>7.1%} {d['knn_acc']:>7.1%} {d['logme']:>8.3f} {rgn:>12}"
        )
    lines.append("predicted ranking (no training):")
    for r in doc["ranking"]:
        name = r.get("variant", r["strategy"])
        lines.append(f"{r['rank']:>2}  {name:<14} score {r['score']:.3f}")
    rec = doc["recommendation"]
    lr = rec["lr"]
    decay = f", layer_decay {rec['layer_decay']:g}" if rec.get("layer_decay") is not None else ""
    lines.append(
        f"recommendation: {rec['run']}; partial as {rec['partial']}; lr head {lr['head']:g}, body {lr['body']:g}, "
        f"partial {lr['partial']:g}{decay}"
    )
    behind = advice_rules.far_behind(doc["ranking"], [r["strategy"] for r in doc["ranking"]])
    if behind:
        lines.append(f"far behind (compare --advise skips): {', '.join(behind)}")
    lines.append("why:")
    lines.extend(f"  - {r}" for r in doc["reasons"])
    lines.append(f"check it: {rec['command']['compare']}")
    t = doc["seconds"]
    lines.append(
        f"advise took {t['total']:.1f} s (data {t['data']:.1f}, features {t['features']:.1f}, probes "
        f"{t['probes']:.1f}, gradients {t['gradients']:.1f})"
    )
    return "\n".join(lines)


# ---- HTML: a section for a report, and advise.html ------------------------------------------------------------


def load_advice(folder: str | Path) -> dict[str, Any] | None:
    """advise.json of a folder, or None when there is none (or it cannot be read)."""
    path = Path(folder) / ADVICE_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def advice_html(
    doc: dict[str, Any], figure: str | None = FIGURE, left_out: Collection[str] = (), section_id: str = "advice"
) -> str:
    """advise.json's dict as one HTML <section id="advice">: the predicted ranking, the recommendation, the
    probe-accuracy-vs-depth figure (`figure`: its src relative to the page, None for none), one paragraph of
    reasons and the signals per stage; `left_out`: the strategies `compare --advise` did not train, marked in the
    ranking; `section_id`: its anchor (one a model in a grid's report). Uses the report's CSS classes; no scripts."""
    e = html.escape
    rec = doc["recommendation"]
    lr = rec["lr"]
    t = doc.get("seconds", {}).get("total")
    rows = []
    for r in doc["ranking"]:
        name = r.get("variant", r["strategy"])
        cls = ' class="winner"' if r["rank"] == 1 else ""
        why = "; ".join([f"prior {r['prior']:.2f}", *r["reasons"]])
        if r["strategy"] in left_out or name in left_out:
            why = f"not trained: more than {advice_rules.FAR_BEHIND:.2f} behind the best compared. {why}"
        rows.append(
            f'<tr{cls}><td>{r["rank"]}</td><td class="strategy">{e(name)}</td><td>{r["score"]:.3f}</td>'
            f'<td class="why" style="text-align:left;white-space:normal">{e(why)}</td></tr>'
        )
    depth_rows = []
    for d in doc["signals"]["depths"]:
        rgn = f"{d['rgn']:.2e}" if d.get("rgn") is not None else "-"
        depth_rows.append(
            f"<tr><td>{e(d['stage'])}</td><td>{d['dim']}</td><td>{d['linear_acc']:.1%}</td><td>{d['knn_acc']:.1%}</td>"
            f"<td>{d['logme']:.3f}</td><td>{rgn}</td></tr>"
        )
    s = doc["sampled"]
    decay = f", layer_decay {rec['layer_decay']:g}" if rec.get("layer_decay") is not None else ""
    took = f" in {t:.1f} s" if t is not None else ""
    fig = ""
    if figure:
        fig = (
            f'<figure><img src="{e(figure)}" alt="probe accuracy vs depth, LogME and gradient norm per stage">'
            "<figcaption>Probe accuracy vs depth: linear-probe and k-NN val accuracy of the frozen features after "
            "each stage (left); LogME and the relative gradient norm per stage (right); dashed: the recommended "
            "freeze depth for partial.</figcaption></figure>"
        )
    return "\n".join(
        [
            f'<section id="{html.escape(section_id)}">',
            f'<h2>Advice: predicted ranking without training <span class="sub">thawline advise on {s["train"]} '
            f"train / {s['val']} val images{took}</span></h2>",
            f"<p>Predicted winner: <b>{e(rec['run'])}</b>. For <code>partial</code>, freeze "
            f"{rec['freeze_stages']} of {len(doc['signals']['depths'])} stages: <b>{e(rec['partial'])}</b>. "
            f"Learning rates: head {lr['head']:g}, body {lr['body']:g}, partial {lr['partial']:g}{decay}. "
            f"Check it with <code>{e(rec['command']['compare'])}</code>.</p>",
            '<div class="table-wrap"><table class="left narrow" id="advice-ranking"><thead><tr><th>#</th>'
            '<th style="text-align:left">strategy</th><th>score</th><th style="text-align:left">why: the prior plus '
            "the rules that moved it</th></tr></thead><tbody>",
            *rows,
            "</tbody></table></div>",
            fig,
            f'<p class="reasons"><b>Why.</b> {e("; ".join(doc["reasons"]))}.</p>',
            '<details><summary>signals per stage</summary><div class="table-wrap"><table class="left narrow">'
            "<thead><tr><th>features after</th><th>dim</th><th>linear probe</th><th>k-NN</th><th>LogME</th>"
            "<th>||g||/||w||</th></tr></thead><tbody>",
            *depth_rows,
            "</tbody></table></div></details>",
            "</section>",
        ]
    )


PAGE_STYLE = """
  body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
         background: #f7f8fa; }
  main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 48px; }
  h1 { font-size: 22px; margin: 0 0 2px; } h2 { font-size: 17px; margin: 0 0 12px; }
  .sub { color: #667085; font-size: 12px; font-weight: 400; }
  section { background: #fff; border: 1px solid #e4e7ec; border-radius: 8px; padding: 16px 18px; margin-top: 18px; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { padding: 6px 10px; border-bottom: 1px solid #e4e7ec; text-align: right; }
  table.left th:first-child, table.left td:first-child, td.strategy { text-align: left; }
  th { font-size: 12px; color: #667085; background: #fafbfc; }
  tr.winner { background: #fff7dd; } tr.winner td.strategy { font-weight: 700; }
  img { max-width: 100%; height: auto; display: block; } figure { margin: 12px 0; }
  figcaption { color: #667085; font-size: 12px; } details summary { cursor: pointer; color: #2f5fb3; }
"""


def advice_page(doc: dict[str, Any]) -> str:
    """advise.html: the advice section on a page of its own, the figure beside it in the folder."""
    e = html.escape
    title = f"thawline advise: {doc['model']} on {doc['data']}"
    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{e(title)}</title>\n'
        f"<style>{PAGE_STYLE}</style>\n</head>\n<body>\n<main>\n<h1>{e(title)}</h1>\n"
        f'<div class="sub">{len(doc["classes"])} classes, {doc["num_train"]} train / {doc["num_val"]} val images, '
        f"{doc['img_size']} px, weights {e(str(doc.get('weights_source') or doc.get('weights')))}</div>\n"
        f"{advice_html(doc, doc.get('figure'))}\n</main>\n</body>\n</html>\n"
    )
