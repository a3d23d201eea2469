"""The docs site: it builds (mkdocs --strict: a link to a missing page or anchor fails the build), every measurement
table comes from a records file with its machine, date, command and load, and every page opened in headless
Chromium has no broken internal link and no image that fails to load. The README's own links point at files that
exist."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]' or '.[test]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.glob("*.html") if p.name != "404.html")


class _Refs(HTMLParser):
    """Every id, and every href/src of a page's own content (the theme's assets are checked by the browser)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if a.get("name") and tag == "a":
            self.ids.add(a["name"] or "")
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append(a[key] or "")


def _parse(page: Path) -> _Refs:
    refs = _Refs()
    refs.feed(page.read_text(encoding="utf-8"))
    return refs


def test_site_has_every_guide_and_no_broken_internal_link(site: Path):
    names = {p.name for p in _pages(site)}
    guides = {"index.html", "data.html", "strategies.html", "answer.html", "fewer-trainings.html",
              "robustness.html", "scale.html", "performance.html", "suite.html", "development.html"}  # fmt: skip
    assert guides <= names, f"pages missing: {sorted(guides - names)}"
    parsed = {p: _parse(p) for p in _pages(site)}
    broken = []
    for page, refs in parsed.items():
        for ref in refs.refs:
            url = urlsplit(ref)
            if url.scheme or url.netloc or ref.startswith(("mailto:", "data:", "javascript:")):
                continue  # external: not checked offline
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.name}: {ref} (no such file)")
            elif url.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(url.fragment) not in ids:
                    broken.append(f"{page.name}: {ref} (no such anchor)")
    assert broken == [], "\n".join(broken)


def test_measurement_tables_are_generated_with_their_provenance(site: Path):
    records = sorted((ROOT / "benchmarks" / "records").glob("*.json"))
    assert records, "no records files"
    generated = ROOT / "docs" / "generated"
    for path in records:
        rec = json.loads(path.read_text())
        if rec.get("kind") == "table":
            text = (generated / f"{path.stem}.md").read_text()
            assert rec["rows"] and all(len(row) == len(rec["columns"]) for row in rec["rows"]), path.name
            assert rec["rows"][0][0].replace("|", "\\|") in text
    html = "".join(p.read_text(encoding="utf-8") for p in _pages(site))
    blocks = html.count("Where this was measured")
    assert blocks >= len(records), "a generated table is not included in any page"
    for field in ("Machine:", "Date:", "Command:", "Load:"):
        assert html.count(field) >= blocks, f"a table does not say its {field[:-1].lower()}"
    # no page types a table of measured accuracies by hand: every markdown table with a percentage comes from a record
    for md in (ROOT / "docs").glob("*.md"):
        typed = [line for line in md.read_text().splitlines() if line.startswith("|") and re.search(r"\d%", line)]
        assert typed == [], f"{md.name} types a measurement table by hand: {typed[:2]}"


_HARNESS = """<!doctype html><meta charset="utf-8"><title>docs check</title><body>
<script>
const pages = %s;
function loaded(frame, url) {
  return new Promise(resolve => { frame.onload = () => resolve(); frame.src = url; });
}
async function check() {
  const report = {pages: 0, images: 0, links: 0, broken_images: [], broken_links: []};
  const seen = new Map();
  const frame = document.createElement("iframe");
  frame.style.width = "1200px"; frame.style.height = "900px";
  document.body.appendChild(frame);
  for (const page of pages) {
    await loaded(frame, page);
    const doc = frame.contentDocument;
    report.pages += 1;
    for (const img of doc.images) {
      report.images += 1;
      if (!img.complete) await new Promise(r => { img.onload = img.onerror = r; });
      if (!(img.naturalWidth > 0)) report.broken_images.push(page + ": " + img.getAttribute("src"));
    }
    for (const a of doc.querySelectorAll("a[href]")) {
      const url = new URL(a.getAttribute("href"), frame.contentWindow.location.href);
      if (url.origin !== location.origin) continue;
      report.links += 1;
      const file = url.origin + url.pathname;
      if (!seen.has(file)) {
        seen.set(file, fetch(file).then(async r => r.ok ? await r.text() : null).catch(() => null));
      }
      const text = await seen.get(file);
      if (text === null) { report.broken_links.push(page + " -> " + url.pathname); continue; }
      const id = decodeURIComponent(url.hash.slice(1));
      if (id && file.endsWith(".html")) {
        const target = new DOMParser().parseFromString(text, "text/html");
        if (!target.getElementById(id) && !target.getElementsByName(id).length)
          report.broken_links.push(page + " -> " + url.pathname + url.hash);
      }
    }
  }
  return report;
}
// the result goes back to the test's server: no waiting on chromium's virtual time (Material's scripts keep it busy)
check().catch(e => ({error: String(e)})).then(r => fetch("/_result", {method: "POST", body: JSON.stringify(r)}));
</script>
"""


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site; the harness POSTs its report to /_result."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.result = body.decode()  # type: ignore[attr-defined]
        self.server.done.set()  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_pages_in_headless_chromium_load_every_image_and_link(site: Path, tmp_path: Path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium binary on PATH: the headless-browser check of the docs cannot run")
    pages = [p.name for p in _pages(site)]
    (site / "_check.html").write_text(_HARNESS % json.dumps(pages))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    server.done, server.result = threading.Event(), None  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/_check.html"
    args = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
            "--remote-debugging-port=0", url]  # fmt: skip  (the debugging port keeps the browser open)
    browser = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        finished = server.done.wait(timeout=90)  # type: ignore[attr-defined]
    finally:
        browser.terminate()
        try:
            _, stderr = browser.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            browser.kill()
            _, stderr = browser.communicate()
        server.shutdown()
        server.server_close()
    assert finished, f"the pages' check did not report within 90 s: {stderr[-2000:]}"
    report = json.loads(server.result)  # type: ignore[attr-defined]
    assert "error" not in report, report
    assert report["pages"] == len(pages)
    assert report["images"] >= 1 and report["broken_images"] == [], report["broken_images"]
    assert report["links"] > len(pages) and report["broken_links"] == [], report["broken_links"]


def test_readme_links_point_at_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150, "the README is one screen of what matters: move the rest to docs/"
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path
        if not file.exists():
            missing.append(target)
        elif anchor and file.suffix == ".md":
            text = file.read_text()
            titles = re.findall(r"^#+ (.*)$", text, re.M)
            headings = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in titles}
            if anchor not in headings and f'id="{anchor}"' not in text:
                missing.append(target)
    assert missing == [], f"README links to nothing: {missing}"
