"""endpoint_plan: what the endpoint will be, decided at plan time from the config and the plan.
Each impossibility is a UserInputError naming the config field (exit 2, nothing created).

Plans come from the toy model on a hand-built catalog (tests/sizing/test_plan_boundaries), so
the chosen option's shape is known without the real catalog.
"""

from pathlib import Path

import pytest
from lmiflow.sizing.catalog import catalog_with
from lmiflow.sizing.planner import plan

from lmiflow import endpoint_plan
from lmiflow.errors import UserInputError
from lmiflow.serving.images import LmiImage
from lmiflow.spec import load_spec
from tests.sizing.test_plan_boundaries import exactly, request, row, toy

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "llama-2-13b-worked-example.yaml"
AMI_SOURCE = endpoint_plan.AMI_SOURCE


def spec(**overrides):
    return load_spec(CONFIG, overrides)


def toy_plan(count=1, gpus=1, memory=None, concurrency=4):
    """The toy on ml.x.large: `gpus` GPUs that hold 4 requests each, `count` instances."""
    cat = catalog_with([row("ml.x.large", gpus, memory or exactly(4), 1.0)])
    return plan(toy(), request(concurrency, instance_count=count), cat)


def image(cuda="12.8", version="0.33.0"):
    return LmiImage(backend="vllm", framework="djl-lmi", djl_version=version,
                    tag=f"{version}-lmi15.0.0-cu{cuda.replace('.', '')}", release="lmi15.0.0",
                    cuda=cuda, source="test")


def test_image_is_the_configs_version_and_an_unknown_one_names_the_field():
    assert endpoint_plan.image_for(spec(serving={"image_version": "0.31.0"})).cuda == "12.4"
    with pytest.raises(UserInputError) as e:
        endpoint_plan.image_for(spec(serving={"image_version": "0.0.1"}))
    assert e.value.field == "serving.image_version"
    assert e.value.reason.startswith("0.0.1 is not a ")


def test_serving_plan_carries_the_chosen_option_and_the_workload():
    s = spec(model={"id": "meta-llama/Llama-2-13b-hf", "revision": "abc123",
                    "trust_remote_code": True},
             instance={"gpu_memory_utilization": 0.8})
    p = toy_plan(gpus=2)  # two copies of tp 1: 2 requests each
    sp = endpoint_plan.serving_plan(s, p, "/opt/ml/model", "fp16", model_loading_timeout_s=900)
    o = p.chosen
    assert (sp.model_id, sp.revision, sp.trust_remote_code) == ("/opt/ml/model", "abc123", True)
    assert (sp.tensor_parallel_degree, sp.max_batch) == (1, 2)
    assert (sp.max_input_tokens, sp.max_output_tokens) == (3072, 1024)  # the config's workload
    assert (sp.dtype, sp.activation_dtype, sp.kv_cache_dtype) == ("fp16", "bf16", "bf16")
    assert sp.gpu_memory_utilization == 0.8 and sp.gpu_memory_bytes == exactly(4)
    assert sp.fixed_bytes_per_gpu == o.per_gpu["weights_bytes"] + o.per_gpu["overhead_bytes"]
    assert sp.model_loading_timeout_s == 900


def test_nothing_chosen_is_the_plans_own_reason():
    p = toy_plan(memory=exactly(4) - 1)
    assert p.chosen is None
    for call in (lambda: endpoint_plan.serving_plan(spec(), p, "m", "fp16"),
                 lambda: endpoint_plan.promotion_plan(spec(), p, shifts_traffic=True)):
        with pytest.raises(UserInputError) as e:
            call()
        assert (e.value.field, e.value.reason) == ("plan", p.chosen_reason)


def test_serving_options_reach_the_properties_and_bad_ones_name_their_field():
    s = spec(serving={"options": {"option.enforce_eager": True,
                                  "option.max_rolling_batch_size": 6}})
    sp = endpoint_plan.serving_plan(s, toy_plan(), "m", "fp16")
    props = endpoint_plan.serving_properties(s, sp, image())
    assert props.extra == {"option.enforce_eager": "true"}
    assert props.max_rolling_batch_size == 6  # raised above the planned 4
    planned = spec(serving={"options": {"option.tensor_parallel_degree": 4}})
    with pytest.raises(UserInputError) as e:
        endpoint_plan.serving_properties(planned, sp, image())
    assert e.value.field == "serving.options"
    assert "'option.tensor_parallel_degree': set " in e.value.reason
    with pytest.raises(UserInputError) as e:  # the config refuses it before any plan
        spec(serving={"options": {"bogus": 1}})
    assert e.value.field == "serving.options"
    # and rendering still does, for a spec built without validation
    malformed = s.model_copy(update={"serving": s.serving.model_copy(
        update={"options": {"bogus": 1}})})
    with pytest.raises(UserInputError) as e:
        endpoint_plan.serving_properties(malformed, sp, image())
    assert e.value.field == "serving.options"
    assert e.value.reason.startswith("key 'bogus': must start with 'option.'")


def test_host_ami_is_the_lowest_whose_driver_serves_the_images_cuda():
    h = endpoint_plan.host_settings(spec(instance={"routing_strategy": "RANDOM"}), image("12.4"))
    assert h.inference_ami_version == "al2-ami-sagemaker-inference-gpu-3-1"
    assert h.routing_strategy == "RANDOM" and h.warning is None
    assert h.why == ("image 0.33.0-lmi15.0.0-cu124 is built for CUDA 12.4; "
                     "al2-ami-sagemaker-inference-gpu-3-1 has NVIDIA driver 550 (CUDA 12.4), "
                     f"the lowest that serves it ({AMI_SOURCE})")
    assert endpoint_plan.host_settings(spec(), image("12.8")).inference_ami_version == (
        "al2023-ami-sagemaker-inference-gpu-4-1")
    with pytest.raises(UserInputError) as e:
        endpoint_plan.host_settings(spec(), image("14.0"))
    assert e.value.field == "serving.image_version"
    assert e.value.reason.startswith("no inference AMI supports CUDA 14.0 (newest: ")


def test_a_pinned_ami_is_kept_and_warned_about_only_when_its_cuda_is_older():
    old = spec(instance={"inference_ami_version": "al2-ami-sagemaker-inference-gpu-2"})
    h = endpoint_plan.host_settings(old, image("12.8"))
    assert h.inference_ami_version == "al2-ami-sagemaker-inference-gpu-2"
    assert h.routing_strategy == "LEAST_OUTSTANDING_REQUESTS"
    assert h.why == "pinned by instance.inference_ami_version"
    assert h.warning == (
        "instance.inference_ami_version al2-ami-sagemaker-inference-gpu-2 has CUDA 12.2 "
        "(driver 535) but the image 0.33.0-lmi15.0.0-cu128 is built for CUDA 12.8: it relies "
        "on the image's forward-compatibility libraries")
    # a driver as new as the image's CUDA needs no warning
    assert endpoint_plan.host_settings(old, image("12.2")).warning is None


def test_promotion_plan_on_the_chosen_fleet_with_its_first_traffic_step():
    s = spec(promotion={"strategy": "CANARY", "canary_size_pct": 25, "termination_wait_s": 60,
                        "alarms": ["p99-latency"]}, instance={"count": 4})
    pp = endpoint_plan.promotion_plan(s, toy_plan(count=4, concurrency=16), shifts_traffic=True)
    assert (pp.strategy, pp.instance_type, pp.instance_count) == ("CANARY", "ml.x.large", 4)
    assert pp.traffic_step == "25 % of 4 = 1 instance(s)"
    assert (pp.termination_wait_s, pp.alarms) == (60, ["p99-latency"])
    # a redeploy of the same shape: candidate and production side by side
    assert pp.peak_instances == {"ml.x.large": 8}
    assert pp.peak_assumption == "a redeploy: production has the same instances"
    assert set(pp.quota_names) == {"ml.x.large"}
    linear = spec(promotion={"strategy": "LINEAR", "linear_step_pct": 50}, instance={"count": 4})
    lp = endpoint_plan.promotion_plan(linear, toy_plan(count=4, concurrency=16), True)
    assert lp.traffic_step == "50 % of 4 = 2 instance(s)"
    assert endpoint_plan.promotion_plan(spec(), toy_plan(), True).traffic_step is None


def test_a_traffic_shift_the_chosen_fleet_cannot_take_names_the_field_and_the_fleet():
    s = spec(promotion={"strategy": "CANARY", "canary_size_pct": 50}, instance={"count": 2})
    one = toy_plan(count=1)  # the plan ended up with one instance
    with pytest.raises(UserInputError) as e:
        endpoint_plan.promotion_plan(s, one, shifts_traffic=True)
    assert e.value.field == "promotion.strategy"
    assert e.value.reason.endswith("(the plan chose 1 x ml.x.large)")
    # a target that does not shift traffic in steps has nothing to check or show
    pp = endpoint_plan.promotion_plan(s, one, shifts_traffic=False)
    assert pp.traffic_step is None and pp.instance_count == 1


def test_peak_with_a_described_production_adds_the_candidate_to_it():
    pp = endpoint_plan.promotion_plan(spec(), toy_plan(count=2, concurrency=8), True)
    peak = endpoint_plan.with_peak(pp, {"ml.y.large": 3})
    assert peak.peak_instances == {"ml.x.large": 2, "ml.y.large": 3}
    assert peak.peak_assumption == "production as described now"
    assert set(peak.quota_names) == {"ml.x.large", "ml.y.large"}
    assert pp.peak_instances == {"ml.x.large": 4}  # the original is unchanged


def test_an_image_uri_with_an_lmi_tag_is_that_image_and_one_without_names_its_field():
    uri = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.31.0-lmi13.0.0-cu124"
    assert endpoint_plan.image_for(spec(serving={"image_uri": uri})).tag == (
        "0.31.0-lmi13.0.0-cu124")
    with pytest.raises(UserInputError) as e:
        endpoint_plan.image_for(spec(serving={"image_uri": "example.com/mine:latest"}))
    assert e.value.field == "serving.image_uri"
    assert e.value.reason.startswith("tag 'latest' is not an LMI tag (<djl>-lmi<N>-cu<NNN>): ")


def test_a_tensorrt_llm_start_up_waits_for_the_engine_build():
    """The TensorRT-LLM image compiles the engine before /ping answers: 10 minutes for the
    build (the LMI docs' '7 minutes and more' rounded up) plus writing the checkpoint and
    the engine, 2 x 20 s per GB of weights; vLLM builds nothing."""
    from lmiflow.serving.images import image_from_tag

    trt = image_from_tag("0.33.0-tensorrtllm0.21.0-cu128", "test")
    weights = 16.06e9  # Llama-3.1-8B in bf16
    assert endpoint_plan.engine_build_s(image(), weights) == 0
    assert endpoint_plan.engine_build_s(trt, weights) == 600 + 643
    # added to the weights' own start-up (922 s for 16 GB), within SageMaker's 3600 s
    assert endpoint_plan.startup_with_build(922, 1243) == 2165
    assert endpoint_plan.startup_with_build(3000, 1243) == 3600
    assert endpoint_plan.startup_with_build(None, 1243) is None


def test_the_trtllm_dry_run_gives_the_build_to_sagemaker_and_to_lmi(monkeypatch, capsys):
    """Both clocks include the build: SageMaker's health check and LMI's own
    option.model_loading_timeout (the container must not give up first)."""
    import json

    from lmiflow.cli import main
    from lmiflow.targets.sagemaker_requests import sizing_timeouts

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    cfg = Path(__file__).resolve().parents[2] / "configs" / "llama-3.1-8b-trtllm.yaml"
    assert main(["deploy", str(cfg), "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    weights = report["plan"]["memory"]["weights_bytes"]
    (cfg_req,) = [r for r in report["requests"] if r["operation"] == "CreateEndpointConfig"]
    startup = cfg_req["params"]["ProductionVariants"][0][
        "ContainerStartupHealthCheckTimeoutInSeconds"]
    assert startup >= sizing_timeouts(weights)[2] + 600
    assert f"option.model_loading_timeout={startup}\n" in report["serving_properties"]
    assert "option.dtype=bfloat16\n" in report["serving_properties"]
