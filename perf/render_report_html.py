"""Time report writing and render report.html in headless Chromium (when installed).

Usage: python perf/render_report_html.py [--out DIR]

Prints how long write_report takes for the sample reports (and the plots' share of it), the
files' sizes, and, with Chromium, the time to render the page, how much of the screenshot is
not blank and whether every <img> decoded (naturalWidth > 0). Screenshots land in --out
(a temp dir by default) so a person can look at them.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmiflow.report.markdown import render_markdown  # noqa: E402
from lmiflow.report.plots import all_plots  # noqa: E402
from lmiflow.report.writer import render_json, write_report  # noqa: E402


def _load(name: str):
    # The installed smdebug_rulesconfig ships a top-level `tests` package that shadows ours
    # outside pytest, so load the shared test helpers by path.
    spec = importlib.util.spec_from_file_location(f"report_{name}",
                                                  ROOT / f"tests/report/{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where screenshots go")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="lmiflow-report-"))
    out.mkdir(parents=True, exist_ok=True)
    sample = _load("sample")
    chromium = _load("chromium")

    full = sample.full_report()
    all_plots(full)  # warm matplotlib's import and font cache
    t_text = _best(lambda: (render_json(full), render_markdown(full)))
    t_plots = _best(lambda: all_plots(full))
    t_write = _best(lambda: write_report(full, out / "full"))
    print(
        f"write_report(full): {t_write:.3f} s  (json+md {t_text * 1000:.1f} ms, "
        f"plots {t_plots:.3f} s = {t_plots / t_write:.0%} of it)"
    )
    for name, png in all_plots(full).items():
        print(f"  plot {name}: {len(png or b'') / 1024:.0f} KiB")

    reports = {
        "full": full,
        "rejected": sample.rejected_report(),
        "failed_early": sample.failed_early_report(),
        "failed_at_start": sample.failed_at_start_report(),
        "planned": sample.planned_report(),
    }
    paths = {name: write_report(r, out / name) for name, r in reports.items()}
    for name, p in paths.items():
        sizes = ", ".join(f"{k} {v.stat().st_size / 1024:.0f} KiB" for k, v in p.items())
        print(f"{name}: {sizes}")

    browser = chromium.find()
    if browser is None:
        print("chromium: not installed, render check skipped (apt-get install -y chromium)")
        return 0
    from PIL import Image

    failures = 0
    for name, p in paths.items():
        shot = out / f"{name}.png"
        start = time.perf_counter()
        chromium.run(browser, out, f"--screenshot={shot}", "--window-size=1280,7000",
                     p["html"].as_uri())
        elapsed = time.perf_counter() - start
        with Image.open(shot) as image:
            histogram = image.convert("L").histogram()
            ink = sum(histogram[:245]) / (image.width * image.height)
        text = p["html"].read_text(encoding="utf-8")
        probe = out / f"{name}-probe.html"
        probe.write_text(chromium.probe_page(text))
        dom = chromium.run(browser, out, "--dump-dom", "--virtual-time-budget=10000",
                           probe.as_uri())
        images = chromium.probed(dom.stdout)
        widths = [i["w"] for i in images or []]
        ok = images is not None and all(w > 0 for w in widths)
        failures += not ok
        print(
            f"chromium {name}: screenshot {elapsed:.2f} s, non-white {ink:.1%}, "
            f"images {len(widths)} decoded={ok} -> {shot}"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
