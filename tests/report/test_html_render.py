"""Open report.html in headless Chromium: the page renders and every plot decodes.

Skips when Chromium is not installed (``apt-get install -y chromium`` provides it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from tests.report import chromium

CHROMIUM = chromium.find()
PLOTS = 5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed"),
]


def _chromium(tmp_path: Path, *args: str):
    assert CHROMIUM is not None
    return chromium.run(CHROMIUM, tmp_path, *args)


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
    page = tmp_path / "probe.html"
    page.write_text(chromium.probe_page(text))
    proc = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000", page.as_uri())
    images = chromium.probed_images(proc.stdout)
    assert images is not None, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert len(images) == expected
    for image in images:
        assert image["complete"] and image["w"] >= 600 and image["h"] >= 250, image
