"""Headless Chromium as this project drives it, shared by the render test and
perf/render_report_html.py: where the browser is, the flags this closed network needs, and a
probe that reports every <img>'s decoded size."""

from __future__ import annotations

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


def probe_page(html: str) -> str:
    """The report with the probe script added and allowed by its CSP."""
    return html.replace(CSP, CSP + "; script-src 'unsafe-inline'").replace(
        "</body>", PROBE + "</body>"
    )


def probed_images(dom: str) -> list[dict] | None:
    """The probe's findings from `--dump-dom` output; None when the probe did not run."""
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    return json.loads(match.group(1)) if match else None
