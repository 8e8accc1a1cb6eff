"""The example configs, dry-run: every AWS request each would send (report.json `requests`),
and what each config is an example of, checked from the requests themselves: the host AMI
the image's CUDA needs, least-outstanding-requests routing, the engine's keys in
serving.properties, the lease and the preflight before anything is created, and the candidate
deleted before production changes.

The listing is recorded from the deploy itself (lmiflow.recorded_run): there is no second copy
to keep in line, so no golden listing either; what each example shows is checked here, and
what is sent against what is listed by the e2e runs against moto (test_sagemaker_weights.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmiflow.cli import main
from lmiflow.targets.aws_requests import AwsRequest, validate

ROOT = Path(__file__).resolve().parents[2]
# config -> (InferenceAmiVersion its image's CUDA needs, lines its serving.properties holds)
CASES = {
    # vLLM 0.38.0 (cu130), CANARY on 4 instances
    "llama-3.1-8b-g5-g6": ("al2023-ami-sagemaker-inference-gpu-4-1", [
        "option.entryPoint=djl_python.lmi_vllm.vllm_async_service",
        "option.max_rolling_batch_size=4"]),
    # TensorRT-LLM 0.33.0 (cu128): its own keys, 3,072-token prompts
    "llama-3.1-8b-trtllm": ("al2023-ami-sagemaker-inference-gpu-4-1", [
        "option.entryPoint=djl_python.lmi_trtllm.trtllm_async_service",
        "option.max_input_len=3072", "option.max_seq_len=4096"]),
    # fp8 KV cache
    "qwen2-7b-fp8-kv": ("al2023-ami-sagemaker-inference-gpu-4-1", [
        "option.kv_cache_dtype=fp8", "option.max_model_len=18432"]),
    # autoscaling from the plan: the scalable target and its policy after promotion
    "llama-3.1-8b-autoscaling": ("al2023-ami-sagemaker-inference-gpu-4-1", [
        "option.max_rolling_batch_size=4"]),
    # LMI 0.31.0 (cu124): rolling batch, the CUDA 12.4 AMI
    "llama-2-13b-lmi13": ("al2-ami-sagemaker-inference-gpu-3-1", [
        "option.rolling_batch=vllm"]),
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a dry run calls nothing
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))


def _dry_run(name: str, capsys) -> dict:
    assert main(["deploy", str(ROOT / "configs" / f"{name}.yaml"), "--dry-run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _ops(reqs: list[dict]) -> list[str]:
    return [f"{r['service']} {r['operation']}" for r in reqs]


@pytest.mark.parametrize("name", sorted(CASES))
def test_what_each_example_shows(name, capsys):
    ami, property_lines = CASES[name]
    report = _dry_run(name, capsys)
    reqs = report["requests"]
    for r in reqs:  # each is valid for botocore's service model as shown (secrets masked)
        validate(AwsRequest(**{k: v for k, v in r.items() if v is not None}))
    (config,) = [r for r in reqs if r["operation"] == "CreateEndpointConfig"]
    variant = config["params"]["ProductionVariants"][0]
    assert variant["InferenceAmiVersion"] == ami
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    lines = report["serving_properties"].splitlines()
    for line in property_lines:
        assert line in lines, line
    ops = _ops(reqs)
    # the lease first, released after the candidate's cleanup (a run of the same spec that
    # takes it next has the same candidate names): only the report is written after it
    assert ops[0] == "s3 PutObject" and reqs[0]["params"]["IfNoneMatch"] == "*"
    (release,) = [i for i, r in enumerate(reqs) if r["operation"] == "DeleteObject"
                  and r["params"]["Key"] == reqs[0]["params"]["Key"]]
    assert "IfMatch" in reqs[release]["params"]
    assert {r["step"] for r in reqs[release + 1:]} == {"report"}
    assert any(r["step"] == "cleanup" for r in reqs[:release])
    # the preflight before the first request that creates
    # (planning only reads: the calibration store its latency predictions use)
    assert [r["operation"] for r in reqs if r["step"] == "choose_instance"] == ["GetObject"]
    first_write = next(i for i, r in enumerate(reqs)
                       if r["step"] not in ("lock", "choose_instance", "preflight"))
    assert "service-quotas ListServiceQuotas" in ops[:first_write]
    # promotion: the candidate endpoint goes before production is created or updated
    promote = [r for r in reqs if r["step"] == "promote"]
    gone = next(i for i, r in enumerate(promote) if r["operation"] == "DeleteEndpoint"
                and r["params"]["EndpointName"] == report["candidate_endpoint"])
    changes = [i for i, r in enumerate(promote)
               if r["operation"] in ("CreateEndpoint", "UpdateEndpoint")]
    assert changes and gone < min(changes)
    # the benchmark's records are appended to the calibration store in the S3 prefix,
    # created if absent, else replaced only if no other run wrote it since it was read
    bucket, prefix = report["config"]["target"]["s3_uri"][5:].split("/", 1)
    store = {"Bucket": bucket, "Key": prefix.rstrip("/") + "/calibration.json"}
    in_s3 = [r for r in reqs if r["step"] == "benchmark" and r["service"] == "s3"]
    appended = [r for r in in_s3 if r["params"]["Key"] == store["Key"]]
    assert [(r["operation"], {k: r["params"].get(k) for k in store}) for r in appended] == [
        ("GetObject", store), ("PutObject", store), ("PutObject", store)]
    conditions = {next(k for k in ("IfNoneMatch", "IfMatch") if k in r["params"]): r["when"]
                  for r in appended[1:]}
    assert conditions == {"IfNoneMatch": "only in a first deploy",
                          "IfMatch": "when production exists"}
    # the other reads: the tokenizer in the weights' prefix, when the runner has none
    model_data = next(r for r in reqs if r["operation"] == "CreateModel")["params"][
        "PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"]
    reads = [r for r in in_s3 if r not in appended]
    assert {r["operation"] for r in reads} == {"GetObject"}
    assert {f"s3://{r['params']['Bucket']}/{r['params']['Key']}" for r in reads} >= {
        model_data + "tokenizer.json", model_data + "tokenizer_config.json"}
    assert all("tokenizer" in r["when"] for r in reads)


def test_canary_example_sends_its_alarms_and_sizes(capsys):
    report = _dry_run("llama-3.1-8b-g5-g6", capsys)
    reqs = report["requests"]
    (alarms,) = [r for r in reqs if r["operation"] == "DescribeAlarms"]
    assert alarms["params"]["AlarmNames"] == ["llama-3-1-8b-prod-5xx",
                                              "llama-3-1-8b-prod-p99-latency"]
    (update,) = [r for r in reqs if r["operation"] == "UpdateEndpoint"]
    policy = update["params"]["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"]["CanarySize"] == {
        "Type": "CAPACITY_PERCENT", "Value": 50}
    plan = report["promotion_plan"]
    n = plan["instance_count"]
    assert n * 50 / 100 >= 1  # the canary is at least one whole instance
    assert plan["peak_instances"] == {plan["instance_type"]: 2 * n}
