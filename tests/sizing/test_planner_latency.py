"""SLO-aware planning: predictions on every fitting option, latency limits with a margin, the
reasons options fail, scale-out to max_instance_count, calibrated factors."""

import itertools
from pathlib import Path

import pytest
from lmiflow.sizing.latency import ERROR_BAND, Efficiency
from lmiflow.sizing.model_spec import parse_model_config, read_config_file
from lmiflow.sizing.planner import LatencyLimit, PlanRequest, plan

MODELS = Path(__file__).resolve().parents[2] / "configs" / "models"


def spec(name):
    return parse_model_config(read_config_file(MODELS / name))


def llama8b(**kw):
    req = dict(max_input_tokens=2048, max_output_tokens=512, concurrency=16,
               allow=["ml.g5.*", "ml.g6.*"])
    req.update(kw)
    return plan(spec("llama-3.1-8b"), PlanRequest(**req))


def tpot(ms, **kw):
    return LatencyLimit(metric="tpot_ms", threshold=ms, source="gate", **kw)


def test_every_fitting_option_carries_a_prediction():
    p = llama8b()
    fitting = [o for o in p.options if o.fits]
    assert fitting and all(o.predicted is not None for o in fitting)
    # an option whose KV cache holds too few is predicted with the others queued for a slot
    queued = [o for o in p.options if o.binding == "kv_cache" and o.predicted]
    assert all(o.predicted.queued_per_copy > 0 and "queue" in o.reason for o in queued)
    assert all(o.predicted is None for o in p.options if not o.fits and o not in queued)
    for o in fitting:
        pr = o.predicted
        assert 0 < pr.ttft_ms < pr.e2e_ms and pr.tpot_ms > 0 and pr.output_tokens_per_s > 0
        assert pr.calibrated is False
        # DESIGN's cost formula: hourly price x instances / (tokens/s x 3600) x 1e6.
        assert o.usd_per_1m_output_tokens == pytest.approx(
            o.usd_per_hour / (pr.output_tokens_per_s * 3600) * 1e6)


def test_a_forced_option_is_predicted_too():
    p = plan(spec("llama-3.1-70b"), PlanRequest(max_input_tokens=1024, max_output_tokens=256,
                                                concurrency=8, instance_type="ml.p5.48xlarge",
                                                tensor_parallel_degree=4))
    assert [(o.instance_type, o.tensor_parallel_degree) for o in p.options] == [
        ("ml.p5.48xlarge", 4)]
    assert p.chosen.predicted is not None and p.chosen.predicted.tpot_ms > 0


def test_the_example_gate_rejects_what_cannot_meet_it():
    # configs/llama-3.1-8b-g5-g6.yaml: 16 requests on 2 instances, TPOT p50 <= 50 ms. An L4
    # reads 16 GB of bf16 weights at 300 GB/s: over 53 ms a step before any KV read.
    p = llama8b(instance_count=2, latency_limits=[tpot(50)])
    assert p.chosen is not None
    assert p.chosen.predicted.tpot_ms <= 50 * 0.9  # the margin
    g6 = next(o for o in p.options if o.instance_type == "ml.g6.xlarge")
    assert g6.fits and not g6.eligible and g6.binding == "latency"
    assert g6.reason.startswith("predicted TPOT p50 ") and "> gate 50 ms" in g6.reason
    assert g6.predicted.tpot_ms > 53
    without = llama8b(instance_count=2)
    assert without.chosen.instance_type == "ml.g6.xlarge"  # what memory alone picks


def test_a_prediction_whose_likely_upper_end_misses_is_rejected_and_says_so():
    p = llama8b(instance_type="ml.g5.xlarge", instance_count=2)
    t = p.options[0].predicted.tpot_ms
    hi = ERROR_BAND["tpot_ms"]["uncalibrated"][1]
    near = llama8b(instance_type="ml.g5.xlarge", instance_count=2,
                   latency_limits=[tpot(t / 0.95)])  # the median meets it, by only 5 %
    o = near.options[0]
    assert not o.eligible and f"(likely up to {t * hi:.0f} ms)" in o.reason
    met = llama8b(instance_type="ml.g5.xlarge", instance_count=2,
                  latency_limits=[tpot(t * hi * 1.001)]).options[0]
    assert met.eligible and met.predicted.limits[0].headroom_pct == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize(("model", "shape"), list(itertools.product(
    ["llama-3.1-8b", "llama-2-13b", "mixtral-8x7b"],
    [(512, 128, 1), (2048, 512, 16), (3000, 1000, 64)])))
def test_a_loose_limit_never_changes_the_choice(model, shape):
    s_in, s_out, conc = shape
    base = dict(max_input_tokens=s_in, max_output_tokens=s_out, concurrency=conc,
                max_instance_count=4)
    plain = plan(spec(model), PlanRequest(**base))
    assert plain.chosen is not None
    pr = plain.chosen.predicted
    loose = [LatencyLimit(metric="ttft_ms", threshold=pr.ttft_ms * 2),
             LatencyLimit(metric="tpot_ms", threshold=pr.tpot_ms * 2),
             LatencyLimit(metric="e2e_ms", threshold=pr.e2e_ms * 2)]
    limited = plan(spec(model), PlanRequest(**base, latency_limits=loose))
    key = ("instance_type", "tensor_parallel_degree", "instance_count")
    assert [getattr(limited.chosen, k) for k in key] == [getattr(plain.chosen, k) for k in key]


def test_a_tight_limit_changes_the_choice_and_the_choice_meets_it():
    plain = llama8b()
    limit = plain.chosen.predicted.tpot_ms * 0.6
    tight = llama8b(latency_limits=[tpot(limit)])
    assert tight.chosen is not None and tight.chosen != plain.chosen
    assert tight.chosen.predicted.tpot_ms <= limit * 0.9
    assert tight.chosen.usd_per_hour >= plain.chosen.usd_per_hour
    cheaper = [o for o in tight.options if o.binding == "latency"]
    assert cheaper and all("predicted TPOT p50" in o.reason for o in cheaper)


def test_max_concurrency_is_what_meets_the_limits():
    p = llama8b(instance_type="ml.g5.xlarge", latency_limits=[tpot(60)])
    o = p.options[0]
    assert 0 < o.max_concurrency_per_copy == o.max_concurrency
    # One more request per copy would miss the limit (with its margin); the held number meets it.
    at = plan(spec("llama-3.1-8b"), PlanRequest(
        max_input_tokens=2048, max_output_tokens=512, concurrency=o.max_concurrency,
        instance_type="ml.g5.xlarge", latency_limits=[tpot(60)]))
    over = plan(spec("llama-3.1-8b"), PlanRequest(
        max_input_tokens=2048, max_output_tokens=512, concurrency=o.max_concurrency + 1,
        instance_type="ml.g5.xlarge", latency_limits=[tpot(60)]))
    assert at.options[0].eligible and not over.options[0].eligible


def test_scale_out_when_several_small_instances_cost_less():
    # The case: an 8B model at concurrency 16 under a TPOT limit an A10G meets only at a
    # few requests per copy: several g5.xlarge beat one g5.12xlarge.
    fixed = llama8b(allow=["ml.g5.xlarge", "ml.g5.12xlarge"], latency_limits=[tpot(60)])
    scaled = llama8b(allow=["ml.g5.xlarge", "ml.g5.12xlarge"], latency_limits=[tpot(60)],
                     max_instance_count=8)
    assert fixed.chosen.instance_type == "ml.g5.12xlarge"
    c = scaled.chosen
    assert c.instance_type == "ml.g5.xlarge" and c.instance_count > 1
    assert c.usd_per_hour == pytest.approx(1.4084 * c.instance_count)
    assert c.usd_per_hour < fixed.chosen.usd_per_hour
    assert c.concurrency_per_copy * c.instance_count >= 16
    assert c.predicted.tpot_ms * ERROR_BAND["tpot_ms"]["uncalibrated"][1] <= 60


def test_scale_out_when_one_instance_lacks_kv_memory():
    req = dict(max_input_tokens=7000, max_output_tokens=1000, concurrency=16,
               allow=["ml.g5.xlarge"])
    one = plan(spec("llama-3.1-8b"), PlanRequest(**req))
    assert one.chosen is None and one.options[0].binding == "kv_cache"
    more = plan(spec("llama-3.1-8b"), PlanRequest(**req, max_instance_count=10))
    c = more.chosen
    assert c is not None and c.instance_count > 1 and c.fits
    assert c.concurrency_per_copy <= one.options[0].max_concurrency_per_copy


def test_level_specific_limit_is_checked_at_its_concurrency():
    at_one = llama8b(instance_type="ml.g5.xlarge", instance_count=2,
                     latency_limits=[tpot(50, concurrency=1)])
    o = at_one.options[0]
    # one request alone decodes in ~36 ms on an A10G: likely under 50 ms even at the band's top
    assert o.eligible and o.predicted.limits[0].concurrency == 1
    assert o.predicted.limits[0].headroom_pct > 0


def test_no_option_meets_an_impossible_limit():
    p = llama8b(latency_limits=[tpot(1)])
    assert p.chosen is None
    assert "none meets the latency limits" in p.chosen_reason
    assert "predicted TPOT p50" in p.chosen_reason


def test_calibrated_factors_are_used_and_marked():
    slow = Efficiency(memory=0.3, compute=0.2, step_overhead_ms=5, request_overhead_ms=50,
                      allreduce_latency_ms=0.1)
    base = llama8b(instance_type="ml.g5.xlarge", instance_count=2)
    cal = plan(spec("llama-3.1-8b"), PlanRequest(max_input_tokens=2048, max_output_tokens=512,
                                                 concurrency=16, instance_type="ml.g5.xlarge",
                                                 instance_count=2),
               calibration={("NVIDIA A10G", "vllm"): (slow, 6)})
    assert cal.options[0].predicted.calibrated is True
    assert cal.options[0].predicted.tpot_ms > 2 * base.options[0].predicted.tpot_ms
    assert "calibrated from 6" in cal.calibration["NVIDIA A10G"]
    assert "uncalibrated" in base.calibration["NVIDIA A10G"]


def test_engine_changes_the_prediction():
    on_two_g5 = dict(instance_type="ml.g5.xlarge", instance_count=2)
    v = llama8b(**on_two_g5).options[0].predicted
    t = llama8b(**on_two_g5, engine="trtllm").options[0].predicted
    # TensorRT-LLM's fitted defaults: a smaller request cost and prefills that drift out of
    # step (in-flight batching), but 4.4 ms a step against vLLM's 1.2 ms.
    assert t.ttft_ms < v.ttft_ms and t.tpot_ms > v.tpot_ms


def test_cpu_local_target_has_no_prediction_and_says_limits_are_unchecked():
    from lmiflow.sizing.catalog import catalog_with, local_instance_row
    from lmiflow.sizing.memory import GiB

    cat = catalog_with([local_instance_row("CPU (system RAM)", 1, 64 * GiB)])
    p = plan(spec("phi-3-mini-4k"), PlanRequest(max_input_tokens=256, max_output_tokens=32,
                                                concurrency=1, engine="local",
                                                latency_limits=[tpot(100)]), cat)
    assert p.chosen is not None and p.chosen.predicted is None
    assert any("latency limits not checked" in w for w in p.warnings)


def test_8b_at_16_users_keeps_one_a10g_under_a_50ms_tpot_gate():
    # Issue 22: Llama-3.1-8B, 550 in / 150 out, 16 users, TPOT <= 50 ms. One ml.g5.2xlarge
    # measured 39-43 ms there; the planner used to reject it (predicted 60 ms) for an
    # ml.g6e.2xlarge at 85 % more cost.
    p = plan(spec("llama-3.1-8b"), PlanRequest(
        max_input_tokens=550, max_output_tokens=150, concurrency=16,
        allow=["ml.g5.2xlarge", "ml.g6e.2xlarge"], latency_limits=[tpot(50)]))
    g5 = next(o for o in p.options if o.instance_type == "ml.g5.2xlarge")
    assert g5.eligible and g5.instance_count == 1 and g5.concurrency_per_copy == 16
    check = g5.predicted.limits[0]
    assert check.upper == pytest.approx(
        check.predicted * ERROR_BAND["tpot_ms"]["uncalibrated"][1]) and check.upper <= 50
    # the measured 39 ms lies in the likely range the plan states (43 ms is at its top edge)
    lo, hi = ERROR_BAND["tpot_ms"]["uncalibrated"]
    assert check.predicted * lo <= 39 <= check.predicted * hi
    assert p.chosen.instance_type == "ml.g5.2xlarge"


def test_70b_fp8_at_16_users_picks_nothing_whose_ttft_is_over_a_1s_gate():
    # Issue 22: Llama-3.1-70B fp8, 7,000 in / 1,000 out, 16 users, TTFT <= 1 s. ml.p5 at tp 4
    # with 8 requests per copy measured 1,830 ms; the planner used to pick it (394 ms).
    p = plan(spec("llama-3.1-70b"), PlanRequest(
        dtype="fp8", max_input_tokens=7000, max_output_tokens=1000, concurrency=16,
        latency_limits=[LatencyLimit(metric="ttft_ms", threshold=1000, source="gate")]))
    p5 = next(o for o in p.options
              if o.instance_type == "ml.p5.48xlarge" and o.tensor_parallel_degree == 4)
    assert p5.concurrency_per_copy == 8 and not p5.eligible
    assert "predicted TTFT p50" in p5.reason and "> gate 1000 ms" in p5.reason
    lo, hi = ERROR_BAND["ttft_ms"]["uncalibrated"]
    assert p5.predicted.ttft_ms * lo <= 1830 <= p5.predicted.ttft_ms * hi
    c = p.chosen
    assert c is None or c.predicted.limits[0].upper <= 1000
