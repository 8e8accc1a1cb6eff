"""A run in words: the verdict, production as the run left it, each failed check with the
figures and by how much, a next step; the same text at 80 columns in the terminal and as a
Prefect artifact. Expected figures are worked out by hand from the inputs."""

from __future__ import annotations

import datetime as dt

import pytest

from lmiflow.bench.gates import Check, Verdict
from lmiflow.report.console import summary_lines
from lmiflow.report.digest import digest
from lmiflow.report.model import ReportedModel, RunReport, StepRecord, Versions
from lmiflow.report.outcome import ProductionState, explain_check, figure, outcome, sig

SINCE = dt.datetime(2026, 11, 27, 14, 2, 33, tzinfo=dt.timezone.utc)
PROD = ProductionState(endpoint="lmiflow-demo", status="InService",
                       config="lmiflow-demo-ec-1a2b3c4d", since=SINCE)


@pytest.mark.parametrize(("value", "text"), [
    (21.319599969796, "21.3"), (127.9, "128"), (0.01234, "0.0123"), (12345.6, "12,346"),
    (99.96, "100"), (0.0, "0")])
def test_three_significant_figures(value, text):
    assert sig(value) == text


def test_figures_carry_units():
    assert figure("ttft_ms", 73.46) == "73.5 ms"
    assert figure("e2e_ms", 15234.0) == "15.2 s"
    assert figure("error_rate", 0.0126) == "1.3 %"
    assert figure("output_tokens_per_s", 21.3196) == "21.3 tokens/s"
    assert figure("tpot_ms", None) == "no measurement"


def regression(observed: float, baseline: float, pct: float) -> Check:
    return Check(metric="ttft_ms", stat="p50", op="<=", threshold=baseline * (1 + pct / 100),
                 observed=observed, passed=observed <= baseline * (1 + pct / 100),
                 concurrency=1, kind="regression", baseline=baseline)


def test_regression_says_both_figures_the_change_and_the_limit():
    # 127.9 vs 73.5: +74 %; the limit at 50 % is 110.25 ms.
    text = explain_check(regression(127.9, 73.5, 50))
    assert text == ("TTFT p50 at c=1: 128 ms vs production's 73.5 ms (+74 %); "
                    "limit 110 ms (at most)")


def test_slo_miss_says_by_how_much():
    c = Check(metric="tpot_ms", stat="p95", op="<=", threshold=50.0, observed=65.0,
              passed=False, concurrency=8)
    assert explain_check(c) == "TPOT p95 at c=8: 65.0 ms, limit <= 50.0 ms (30 % over)"
    rate = Check(metric="error_rate", stat="value", op="<=", threshold=0.0, observed=0.25,
                 passed=False, concurrency=4)
    assert explain_check(rate) == "error rate at c=4: 25 %, limit <= 0 % (by 25 %)"


def report(status: str, **kw) -> RunReport:
    steps = [StepRecord(name=n, status="completed", seconds=s, summary=t) for n, s, t in (
        ("fetch_config", 0.29, "llama, 106,816 parameters"),
        ("create_endpoint", 24.0, "InService after 24 s: lmiflow-demo-c-f8f50c49"),
        ("benchmark", 44.56, "c=1: 9 tok/s, c=4: 20 tok/s"))]
    r = RunReport(lmiflow_version="0.1.0", started_at="2026-11-27T14:00:00+00:00",
                  endpoint="lmiflow-demo", target="local", model=ReportedModel(id="m"),
                  versions=Versions(lmiflow="0.1.0", model_revision="main"), config={},
                  steps=steps, status=status, **kw)
    r.outcome = outcome(r, PROD)
    return r


def rejected() -> RunReport:
    slo = Check(metric="ttft_ms", stat="p95", op="<=", threshold=5000, observed=751.4,
                passed=True, concurrency=4)
    return report("rejected", gate=Verdict(passed=False,
                                           checks=[slo, regression(127.9, 73.5, 50)]))


def test_rejection_reads_production_unchanged_with_a_next_step():
    oc = rejected().outcome
    assert oc.headline == ("REJECTED by the gate (1 of 2 checks failed); production unchanged: "
                           "lmiflow-demo still serving lmiflow-demo-ec-1a2b3c4d since "
                           "2026-11-27 14:02 UTC")
    assert oc.reasons == [explain_check(regression(127.9, 73.5, 50))]
    assert any("slower than production" in s for s in oc.next_steps)


def test_failure_names_the_step_and_production():
    r = report("failed", failed_step="create_endpoint", error="server exited\ntraceback...")
    assert r.outcome.headline.startswith("FAILED at create_endpoint; production unchanged")
    assert r.outcome.reasons == ["server exited"]
    first = outcome(r, ProductionState(endpoint="lmiflow-demo"))
    assert "no production endpoint lmiflow-demo exists" in first.headline


def test_a_failed_production_is_never_said_to_be_still_serving():
    """The headline reads production's state: a production that died during the run is
    Failed, not 'unchanged ... still serving'."""
    r = report("failed", failed_step="benchmark", error="production did not answer")
    dead = PROD.model_copy(update={"status": "Failed",
                                   "failure_reason": "server process 42 exited\nlog..."})
    line = outcome(r, dead).headline
    assert "still serving" not in line and "unchanged" not in line
    assert line == ("FAILED at benchmark; production lmiflow-demo is Failed and serves "
                    "nothing (server process 42 exited)")


def test_a_production_that_gave_no_answer_in_time_is_said_to_be_not_answering():
    from lmiflow.errors import NotAnswering
    from lmiflow.run_record import RunRecord
    from lmiflow.spec import DeploymentSpec

    spec = DeploymentSpec.model_validate({
        "name": "lmiflow-demo", "model": {"id": "gpt2"}, "target": {"kind": "local"},
        "workload": {"max_input_tokens": 16, "max_output_tokens": 8, "concurrency": 1}})
    rec = RunRecord(spec, "run-1")
    with pytest.raises(NotAnswering), rec.step("benchmark"):
        raise NotAnswering("lmiflow-demo", "the benchmark's first request",
                           "the per-request timeout of 5 s (benchmark.timeout_s)")
    oc = rec.finish("failed", PROD).outcome
    assert oc.headline == ("FAILED at benchmark; production lmiflow-demo is not answering "
                           "(status InService, config lmiflow-demo-ec-1a2b3c4d): look at it "
                           "now")
    assert "within the per-request timeout of 5 s (benchmark.timeout_s)" in oc.reasons[0]


@pytest.mark.parametrize("width", [80, 100])
def test_terminal_summary_fits_and_never_splits_a_command(width):
    promoted = report("promoted")
    for r in (rejected(), promoted):
        lines = [text for text, _ in summary_lines(r, ".venv/bin/lmiflow",
                                                    "reports/local-demo/report.html", width)]
        assert max(len(line) for line in lines) <= width
        assert not any(line.rstrip().endswith((" 24", " 128", " 73.5", " after"))
                       for line in lines)
    lines = [t for t, _ in summary_lines(promoted, ".venv/bin/lmiflow", "r/report.html", width)]
    assert "  .venv/bin/lmiflow endpoints invoke lmiflow-demo 'Hello' --target local" in lines
    assert "  .venv/bin/lmiflow endpoints delete lmiflow-demo --target local" in lines


def test_digest_holds_the_verdict_the_gate_and_the_plots_not_raw_floats():
    r = rejected()
    text = digest(r, "s3://bucket/prefix/lmiflow-demo/reports/run/report.html",
                  {"memory_per_gpu": b"\x89PNG fake", "latency_percentiles": None})
    assert r.outcome.headline in text and "s3://bucket/prefix" in text
    assert "| ❌ | regression | TTFT p50 at c=1: 128 ms" in text
    assert text.count("data:image/png;base64,") == 1
    assert "127.9" not in text and "110.25" not in text


@pytest.mark.parametrize("width", range(40, 81))
def test_a_number_and_its_unit_stay_on_one_line_at_any_width(width):
    """Also a percentage that ends the text (the demo's interval '-7.1 to 24 %' once broke
    before its %)."""
    from lmiflow.report.console import wrap

    text = ("regression: output tokens/s at c=1: 184 tokens/s vs production's 197 tokens/s "
            "(+7.3 %); limit 131 tokens/s (at least), interval -7.1 to 24 %")
    lines = wrap(text, width, indent="  ", hang="      ")
    assert " ".join(ln.strip() for ln in lines) == text
    assert all(len(ln) <= width for ln in lines)
    for ln in lines[1:]:
        assert not ln.strip().startswith(("%", "tokens/s", "ms")), lines
