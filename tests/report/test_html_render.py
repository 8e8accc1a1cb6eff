"""Open report.html in headless Chromium: the page renders and every plot decodes.

Skips when Chromium is not installed (``apt-get install -y chromium`` provides it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from report.writer import CSP

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium")
CHROMIUM = next((p for p in map(shutil.which, CANDIDATES) if p), None)
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
PLOTS = 5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed"),
]

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


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
        check=False,
    )


def test_screenshot_is_not_blank(written: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    html = written["full"]["html"]
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,4000", html.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        grey = image.convert("L")
        histogram = grey.histogram()
        non_white = sum(histogram[:245]) / (image.width * image.height)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert non_white > 0.05  # text, tables and plots, not an empty page
    assert len(colours) > 200  # anti-aliased text and plots, not a flat error page


@pytest.mark.parametrize("name", ["full", "failed_early"])
def test_every_image_decodes_in_the_browser(
    written: dict[str, dict[str, Path]], tmp_path: Path, name: str
) -> None:
    text = written[name]["html"].read_text(encoding="utf-8")
    expected = len(re.findall(r"<img ", text))
    assert expected == (PLOTS if name == "full" else 3)
    probe_csp = CSP + "; script-src 'unsafe-inline'"
    page = tmp_path / "probe.html"
    page.write_text(text.replace(CSP, probe_csp).replace("</body>", PROBE + "</body>"))
    proc = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000", page.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout)
    assert match, proc.stdout[-1000:] + proc.stderr[-2000:]
    images = json.loads(match.group(1))
    assert len(images) == expected
    for image in images:
        assert image["complete"] and image["w"] >= 600 and image["h"] >= 250, image
