"""write_report: report.json / report.md / report.html for full, failed and planned runs."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from lmiflow.bench.gates import Verdict
from lmiflow.bench.metrics import BenchResult, LatencyStats
from lmiflow.report.markdown import render_markdown
from lmiflow.report.model import ReportedModel, RunReport
from lmiflow.report.writer import render_json, write_report
from tests.report import sample
from tests.report.conftest import SAMPLES
from tests.report.schema import validate_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = (
    "## Summary",
    "## Steps",
    "## Memory",
    "## Instance options",
    "## serving.properties",
    "## Smoke test",
    "## Benchmark",
    "## Predicted vs measured",
    "## Gate",
    "## Metric formulas",
    "## Versions",
)
ALL_PLOTS = {
    "memory_per_gpu",
    "options_vs_price",
    "latency_percentiles",
    "throughput_and_cost",
    "step_timeline",
}
IMG_RE = re.compile(r'<img class="plot" id="plot-([a-z_]+)" alt="[^"]*" src="([^"]*)">')


def _section(md: str, heading: str) -> str:
    """The markdown between ``heading`` and the next level-2 heading."""
    start = md.index(heading)
    end = md.find("\n## ", start + 1)
    return md[start : end if end != -1 else len(md)]


def _plots(html_text: str) -> dict[str, bytes]:
    out = {}
    for name, src in IMG_RE.findall(html_text):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), src[:40]
        out[name] = base64.b64decode(src[len(prefix) :], validate=True)
    return out


def _read(paths: dict[str, Path], kind: str) -> str:
    return paths[kind].read_text(encoding="utf-8")


def test_writes_the_three_files(written: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    paths = written["full"]
    assert set(paths) == {"json", "md", "html"}
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "report.html"}
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert not list(paths["json"].parent.glob("*.tmp"))
    out = write_report(sample.planned_report(), tmp_path / "new" / "dir")  # creates the dir
    assert out["json"].exists()


# DESIGN.md's report.json contract, in its order (the model's test holds the whole list).
CONTRACT_KEYS = ["status", "endpoint", "steps", "plan", "serving_properties", "image_uri",
                 "smoke_test", "benchmark", "gate"]


@pytest.mark.parametrize("name", ["full", "rejected", "failed_early", "failed_at_start", "planned"])
def test_json_round_trips_in_contract_order(written: dict[str, dict[str, Path]], name: str) -> None:
    text = _read(written[name], "json")
    loaded = json.loads(text)
    # The samples hold no secrets: the file is the report, and it reads back into the model.
    assert RunReport.model_validate(loaded) == SAMPLES[name]()
    validate_report(loaded)  # and against the JSON Schema that ships with the package
    assert [k for k in loaded if k in CONTRACT_KEYS] == CONTRACT_KEYS
    assert text.startswith('{\n  "schema_version": 1,\n  "lmiflow_version": "0.1.0"')


def test_json_has_no_nan() -> None:
    report = sample.full_report()
    report.benchmark.levels[0].ttft_ms.p99 = float("nan")

    def reject(constant: str) -> None:
        raise AssertionError(f"invalid JSON constant {constant}")

    loaded = json.loads(render_json(report), parse_constant=reject)
    assert loaded["benchmark"]["levels"][0]["ttft_ms"]["p99"] is None


def test_markdown_of_a_full_run_has_every_section(written: dict[str, dict[str, Path]]) -> None:
    md = _read(written["full"], "md")
    positions = [md.index(h) for h in SECTIONS]
    assert positions == sorted(positions)
    assert md.startswith("# lmiflow run report: lmiflow-llama31-8b")
    assert "## Summary: promoted" in md
    steps = _section(md, "## Steps")
    assert steps.count("✅ completed") == 11
    memory = _section(md, "## Memory")
    # GB = 10^9 bytes: 8,030,261,248 x 2 bytes; 46,068 MiB x 0.9 - weights - KV - overhead
    assert "| weights | 16.06 GB | 16.06 GB |" in memory
    assert "| headroom | — | 20.97 GB |" in memory
    options = _section(md, "## Instance options")
    assert "| 1 ★ | ml.g6e.xlarge |" in options
    assert "L4 has 20.24 GiB usable" in options  # why the cheaper g6.xlarge does not fit
    assert options.count("❌") == 4
    props = _section(md, "## serving.properties")
    assert "```properties\nengine=Python\n" in props
    assert "option.max_model_len=4096" in props
    assert "✅ passed in 1.84 s" in _section(md, "## Smoke test")
    bench = _section(md, "## Benchmark")
    assert "| 32 | 128 | 1 | 0.78% | 380.2 | 720.4 | 1,150.3 |" in bench  # p99 of 127: fine
    assert "| 1 | 32 | 0 | 0.00% | 62.00 | 75.10 | 95.00 † |" in bench  # p99 of 32: flagged
    assert "† too few samples" in bench
    assert "Baseline (the production endpoint)" in bench
    calib = _section(md, "## Predicted vs measured")
    assert ("NVIDIA L40S, TP 1, vllm, image 0.33.0-lmi15.0.0-cu128: predictions from vllm "
            "factors calibrated from 3 benchmark record(s).") in calib
    # (50 - 62) / 62 = -19.4 %, (24 - 20) / 20 = +20 %; (400 - 380.2) / 380.2 = +5.2 %
    assert "| 1 | 512 / 128 | 50.0 | 62.0 | -19 % | 24.0 | 20.0 | +20 % | yes |" in calib
    assert "| 32 | 512 / 128 | 400 | 380 | +5 % | 30.0 | 32.5 | -8 % | yes |" in calib
    assert ("2 record(s) appended to s3://lmiflow-bucket/lf/calibration.json. Refit on 5 "
            "record(s) of NVIDIA L40S / vllm (what the next plan uses): error TTFT 12 %, TPOT "
            "14 % with the defaults, TTFT 6 %, TPOT — fitted.") in calib
    gate = _section(md, "## Gate")
    assert "✅ passed" in gate and "❌" not in gate
    assert (
        "| ✅ | regression | output_tokens_per_s | value | 32 | >= | 661.9 | 781.9 | 120.0 |"
        in gate
    )
    formulas = _section(md, "## Metric formulas")
    assert "- tpot_ms: (E2E − TTFT) / (output tokens − 1), first token excluded" in formulas
    versions = _section(md, "## Versions")
    assert "| lmi_image | 0.33.0-lmi15.0.0-cu128 |" in versions
    assert "not run" not in md


def test_markdown_of_a_rejected_run_shows_the_failed_check(
    written: dict[str, dict[str, Path]],
) -> None:
    md = _read(written["rejected"], "md")
    assert "## Summary: rejected" in md
    assert "**Failed step: gate**" in md
    gate = _section(md, "## Gate")
    assert "❌ failed" in gate
    assert "| ❌ | slo | ttft_ms | p99 | 32 | <= | 800.0 | 1,150.3 | -350.3 |" in gate
    assert "❌ failed | gate |" in _section(md, "## Steps")


def test_markdown_of_a_failed_early_run(written: dict[str, dict[str, Path]]) -> None:
    md = _read(written["failed_early"], "md")
    assert "## Summary: failed" in md
    assert "**Failed step: create_endpoint**" in md
    assert "torch.OutOfMemoryError: CUDA out of memory" in _section(md, "## Summary")
    for heading in ("## Smoke test", "## Benchmark", "## Gate", "## Metric formulas"):
        assert _section(md, heading).strip().endswith("not run"), heading
    assert "option.tensor_parallel_degree=1" in _section(md, "## serving.properties")
    assert "⏭ skipped" in _section(md, "## Steps")


def test_markdown_of_a_run_that_failed_at_the_first_step(
    written: dict[str, dict[str, Path]],
) -> None:
    md = _read(written["failed_at_start"], "md")
    assert all(h in md for h in SECTIONS)
    for heading in ("## Memory", "## Instance options", "## serving.properties", "## Gate"):
        assert _section(md, heading).strip().endswith("not run"), heading
    assert "RepositoryNotFoundError" in md


def test_markdown_of_a_dry_run(written: dict[str, dict[str, Path]]) -> None:
    md = _read(written["planned"], "md")
    assert "## Summary: planned" in md
    assert "Failed step" not in md
    assert _section(md, "## Steps").count("✅ completed") == 4
    assert "| 1 ★ | ml.g6e.xlarge |" in md
    for heading in ("## Smoke test", "## Benchmark", "## Gate"):
        assert _section(md, heading).strip().endswith("not run"), heading


def test_markdown_tables_survive_pipes_newlines_and_fences() -> None:
    report = sample.full_report()
    report.steps[0].summary = "a | b\nc"
    report.serving_properties = "engine=Python\n# ```not a fence end```\n"
    md = render_markdown(report)
    row = next(line for line in md.splitlines() if "fetch_config" in line)
    assert row == "| ✅ completed | fetch_config | 0.41 | a \\| b c |"
    assert "````properties\nengine=Python\n# ```not a fence end```\n````" in md


@pytest.mark.parametrize(
    ("name", "plots"),
    [
        ("full", ALL_PLOTS),
        ("rejected", ALL_PLOTS),
        ("failed_early", {"memory_per_gpu", "options_vs_price", "step_timeline"}),
        ("planned", {"memory_per_gpu", "options_vs_price", "step_timeline"}),
        ("failed_at_start", {"step_timeline"}),
    ],
)
def test_html_holds_each_plot_as_a_decodable_png(
    written: dict[str, dict[str, Path]], name: str, plots: set[str]
) -> None:
    found = _plots(_read(written[name], "html"))
    assert set(found) == plots
    for png in found.values():
        assert png.startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(png)) as image:
            image.load()  # decodes the whole stream, not just the header
            assert image.width >= 600 and image.height >= 250
            assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20


@pytest.mark.parametrize("name", ["full", "failed_early", "failed_at_start", "planned"])
def test_html_is_self_contained(written: dict[str, dict[str, Path]], name: str) -> None:
    text = _read(written[name], "html")
    assert text.startswith("<!DOCTYPE html>")
    for value in re.findall(r'\b(?:src|href|action|poster)\s*=\s*"([^"]*)"', text, re.I):
        assert value.startswith(("data:image/png;base64,", "#")), value[:60]
    lowered = text.lower()
    for needle in (
        "http://",
        "https://",
        "//cdn",
        "<script",
        "<link",
        "@import",
        "url(",
        "<iframe",
    ):
        assert needle not in lowered, needle
    assert "Content-Security-Policy" in text
    for heading in (s.removeprefix("## ") for s in SECTIONS):
        assert f"<h2>{heading}" in text


def test_html_sections_say_not_run(written: dict[str, dict[str, Path]]) -> None:
    text = _read(written["failed_early"], "html")
    smoke = text[text.index('<section id="smoke-test">') :]
    smoke = smoke[: smoke.index("</section>")]
    assert "<p>not run</p>" in smoke
    bench = text[text.index('<section id="benchmark">') :]
    assert bench[: bench.index("</section>")].endswith("<p>not run</p>")
    timeline = text[text.index('<section id="steps">') :]
    assert 'id="plot-step_timeline"' in timeline[: timeline.index("</section>")]


INJECTED = "<script>alert(1)</script>"


def test_every_report_string_is_escaped(tmp_path: Path) -> None:
    report = sample.full_report()
    report.model.id = f"evil/{INJECTED}"
    report.endpoint = 'x" onmouseover="alert(1)'
    report.error = '<img src=x onerror="alert(1)">'
    report.failed_step = INJECTED
    report.steps[2].summary = INJECTED
    report.plan.options[3].reason = INJECTED
    report.plan.chosen_reason = INJECTED
    report.smoke_test.output = "</code></pre>" + INJECTED
    report.serving_properties += f"option.x={INJECTED}\n"
    report.benchmark.formulas["ttft_ms"] = INJECTED
    report.gate.checks[0].metric = INJECTED
    report.versions.prefect = INJECTED
    paths = write_report(report, tmp_path)
    text = paths["html"].read_text()
    lowered = text.lower()
    assert "<script" not in lowered
    assert "<img src=x" not in lowered
    assert 'onmouseover="alert' not in lowered
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10
    md = paths["md"].read_text()
    prose = re.sub(r"```.*?```", "", md, flags=re.S)  # code blocks are literal, hence safe
    assert "<script" not in prose and "<img" not in prose
    assert prose.count("&lt;script>alert(1)&lt;/script>") >= 8
    # JSON keeps the data as it was: escaping is the renderer's job.
    assert json.loads(paths["json"].read_text())["model"]["id"] == f"evil/{INJECTED}"


def test_secrets_never_reach_the_files(tmp_path: Path) -> None:
    hf = "hf_" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDc"
    akid = "AKIA" + "ABCDEFGHIJKLMNOP"
    report = sample.full_report()
    report.config["hf_token"] = hf
    report.config["credentials"] = {"SecretAccessKey": "plainsecret", "AccessKeyId": akid}
    report.error = f"AccessDenied for {akid}; HF_TOKEN={hf}"
    report.steps[0].summary = f"fetched with {hf}"
    report.serving_properties += "option.hf_token=plainhf\n"
    before = report.model_copy(deep=True)
    paths = write_report(report, tmp_path)
    assert report == before  # the caller's report is left alone
    for path in paths.values():
        text = path.read_text()
        for secret in (hf, akid, "plainsecret", "plainhf"):
            assert secret not in text, (path.name, secret)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["config"]["hf_token"] == "***"
    assert loaded["model"]["kv_cache_bytes_per_token"] == 131_072  # a count, kept


def test_writer_copes_with_sparse_data(tmp_path: Path) -> None:
    """Parts the model allows to be missing or empty must not break any renderer."""
    report = sample.full_report()
    plan = report.plan
    plan.chosen = None
    plan.chosen_reason = "no option fits: needs 300 GiB"
    for option in plan.options:
        option.usd_per_hour = None
    level = report.benchmark.levels[0]
    level.tpot_ms = LatencyStats()
    level.itl_ms = LatencyStats()
    level.usd_per_1m_output_tokens = None
    report.benchmark.levels = report.benchmark.levels[:1]
    report.baseline = BenchResult(levels=[])
    report.gate = Verdict(passed=False, checks=[])
    report.steps[3].started_at = None
    report.model = ReportedModel(id="org/m")
    paths = write_report(report, tmp_path)
    md = paths["md"].read_text()
    assert "**No option chosen: no option fits: needs 300 GiB**" in md
    assert "no checks" in md
    assert "| 1 | 32 | 0 | 0.00% | 62.00 | 75.10 | 95.00 † | — | — | — |" in md
    # No option has a price: no price chart (a chart of nothing), every other plot.
    assert set(_plots(paths["html"].read_text())) == ALL_PLOTS - {"options_vs_price"}
    assert "Instance options vs price" not in paths["html"].read_text()


def test_same_report_gives_the_same_bytes(
    written: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    """No timestamps or PNG metadata churn: reruns diff cleanly and can be compared."""
    again = write_report(sample.full_report(), tmp_path)
    for kind, path in written["full"].items():
        assert again[kind].read_bytes() == path.read_bytes(), kind
