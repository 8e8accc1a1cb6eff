"""Open report.html in headless Chromium: the page renders, every plot decodes, and a reader
sees the verdict, every plot and whole tables.

Skips when Chromium is not installed (``apt-get install -y chromium`` provides it), unless
LMIFLOW_REQUIRE_CHROMIUM is set, as CI sets it: there a missing browser fails these tests.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.report import chromium

CHROMIUM = chromium.find()
PLOTS = 5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None and not os.environ.get("LMIFLOW_REQUIRE_CHROMIUM"),
                       reason="headless Chromium is not installed"),
]


def _chromium(tmp_path: Path, *args: str):
    assert CHROMIUM is not None, "headless Chromium is not installed (apt-get install chromium)"
    return chromium.run(CHROMIUM, tmp_path, *args)


def _layout(tmp_path: Path, html: Path, width: int) -> dict:
    page = tmp_path / f"layout-{width}.html"
    page.write_text(chromium.probe_page(html.read_text(encoding="utf-8"), chromium.LAYOUT_PROBE))
    proc = _chromium(tmp_path, f"--window-size={width},1000", "--dump-dom",
                     "--virtual-time-budget=10000", page.as_uri())
    found = chromium.probed(proc.stdout)
    assert found is not None, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert found["viewport"]["w"] == width
    return found


def _shown(element: dict) -> bool:
    return element["w"] > 0 and element["h"] > 0 and element["visibility"] == "visible" \
        and element["display"] != "none"


@pytest.mark.parametrize(("name", "status", "verdict"), [
    ("full", "promoted", "✔ passed"),
    ("rejected", "rejected", "✘ failed"),
])
def test_a_reader_sees_the_verdict_every_plot_and_whole_tables(
    written: dict[str, dict[str, Path]], tmp_path: Path, name: str, status: str, verdict: str
) -> None:
    page = _layout(tmp_path, written[name]["html"], 1280)
    view, main = page["viewport"], page["main"]
    badge = page["badge"]
    # The run's status, on the first screen, in a colour that stands out from its background.
    assert badge["text"] == status and _shown(badge)
    assert badge["top"] >= 0 and badge["bottom"] <= view["h"]
    assert badge["color"] != badge["background"]
    assert page["verdict"]["text"] == verdict and _shown(page["verdict"])
    # Every plot, decoded, shown, and inside the page's column.
    assert len(page["plots"]) == PLOTS
    for plot in page["plots"]:
        assert plot["complete"] and plot["natural_w"] > 0 and _shown(plot), plot
        assert main["left"] <= plot["left"] and plot["right"] <= main["right"], plot
    # At a desktop width every table fits the box that holds it: no hidden columns.
    assert page["tables"]
    for table in page["tables"]:
        assert table["width"] <= table["holder"] + 0.5, table
    assert page["page_width"] <= view["w"]
    # On a narrow window wide tables scroll inside their box; the page never scrolls sideways.
    narrow = _layout(tmp_path, written[name]["html"], 800)
    assert narrow["page_width"] <= narrow["viewport"]["w"]
    assert narrow["verdict"]["right"] <= narrow["viewport"]["w"]


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
    images = chromium.probed(proc.stdout)
    assert images is not None, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert len(images) == expected
    for image in images:
        assert image["complete"] and image["w"] >= 600 and image["h"] >= 250, image
