"""Headless Chromium as this project drives it, shared by the render tests and
perf/render_report_html.py: where the browser is, the flags this closed network needs, and
probes that report what the page shows (every <img>'s decoded size; the layout a reader sees)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from lmiflow.report.html_page import CSP

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# Reports carry no script (their CSP forbids it); this probe is added to a copy only.
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({id: i.id, w: i.naturalWidth, h: i.naturalHeight,
                                               complete: i.complete}));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(imgs);
  document.body.appendChild(out);
});
</script>"""


# What a reader sees: the status badge, the gate's verdict line, each plot as laid out, each
# table against the box that holds it, and whether the page itself scrolls sideways.
LAYOUT_PROBE = """<script>
window.addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, w: r.width,
            h: r.height}; };
  const style = e => { const s = getComputedStyle(e);
    return {color: s.color, background: s.backgroundColor, visibility: s.visibility,
            display: s.display}; };
  const badge = document.querySelector("h1 .badge");
  const verdict = document.querySelector("#gate p.strong");
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    viewport: {w: window.innerWidth, h: window.innerHeight},
    page_width: document.documentElement.scrollWidth,
    main: box(document.querySelector("main")),
    badge: badge && {text: badge.textContent, ...box(badge), ...style(badge)},
    verdict: verdict && {text: verdict.textContent, ...box(verdict), ...style(verdict)},
    plots: [...document.querySelectorAll("img.plot")].map(i => ({
      id: i.id, natural_w: i.naturalWidth, complete: i.complete, ...box(i), ...style(i)})),
    tables: [...document.querySelectorAll("table")].map(t => ({
      section: t.closest("section").id, width: t.getBoundingClientRect().width,
      holder: t.parentElement.clientWidth})),
  });
  document.body.appendChild(out);
});
</script>"""


def find() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def run(browser: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / "profile"
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp)},
        check=False,
    )


def probe_page(page: str, probe: str = PROBE) -> str:
    """The report with a probe script added and allowed by its CSP."""
    return page.replace(CSP, CSP + "; script-src 'unsafe-inline'").replace(
        "</body>", probe + "</body>"
    )


def probed(dom: str):
    """A probe's findings from `--dump-dom` output; None when the probe did not run."""
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    return json.loads(html.unescape(match.group(1))) if match else None

