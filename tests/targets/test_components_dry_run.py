"""Inference-component mode, dry run: two configs naming one endpoint (configs/shared-*.yaml).
Every request is valid for botocore, the component's resource requirements are the plan's
(checked against the plan's own figures in report.json, not against the builder), the packing
counts the other component, and bad numbers exit 2 naming the field before anything exists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from lmiflow.cli import main
from lmiflow.targets.aws_requests import AwsRequest, validate

ROOT = Path(__file__).resolve().parents[2]
LLAMA = str(ROOT / "configs" / "shared-llama-3.1-8b.yaml")
MISTRAL = str(ROOT / "configs" / "shared-mistral-7b.yaml")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a dry run calls nothing
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))


def _dry_run(capsys, *args: str) -> dict:
    assert main(["deploy", *args, "--dry-run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _one(reqs: list[dict], operation: str, **params) -> dict:
    found = [r for r in reqs if r["operation"] == operation
             and all(r["params"].get(k) == v for k, v in params.items())]
    assert len(found) == 1, (operation, params, len(found))
    return found[0]


@pytest.mark.parametrize("config, other", [(LLAMA, MISTRAL), (MISTRAL, LLAMA)])
def test_each_component_is_the_plan(config, other, capsys):
    report = _dry_run(capsys, config, "--alongside", other)
    reqs = report["requests"]
    for r in reqs:  # valid as shown
        validate(AwsRequest(**{k: v for k, v in r.items() if v is not None}))
    settings = yaml.safe_load(Path(config).read_text())["inference_component"]
    chosen, memory = report["plan"]["chosen"], report["plan"]["memory"]
    name = settings["name"]

    (cfg,) = [r for r in reqs if r["operation"] == "CreateEndpointConfig"]
    variant = cfg["params"]["ProductionVariants"][0]
    assert "ModelName" not in variant  # the components bring their models
    assert variant["ManagedInstanceScaling"] == {
        "Status": "ENABLED", "MinInstanceCount": settings.get("min_instances", 1),
        "MaxInstanceCount": settings.get("max_instances", 2)}
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    assert cfg["params"]["ExecutionRoleArn"].endswith(":role/SageMakerExecutionRole")

    candidate = report["component"]["candidate"]
    for component, endpoint in ((candidate, report["candidate_endpoint"]),
                                (name, "shared-llm")):
        create = _one(reqs, "CreateInferenceComponent", InferenceComponentName=component)
        p = create["params"]
        assert p["EndpointName"] == endpoint
        need = p["Specification"]["ComputeResourceRequirements"]
        assert need["NumberOfAcceleratorDevicesRequired"] == chosen["tensor_parallel_degree"]
        # the whole model's weights in MiB, rounded up
        assert need["MinMemoryRequiredInMb"] == math.ceil(memory["weights_bytes"] / 2**20)
        assert p["RuntimeConfig"] == {"CopyCount": settings["copies"]}
        assert p["Specification"]["ModelName"] == report["candidate_endpoint"].replace(
            "-c-", "-m-")

    update = _one(reqs, "UpdateInferenceComponent", InferenceComponentName=name)
    rolling = update["params"]["DeploymentConfig"]["RollingUpdatePolicy"]
    assert rolling["MaximumBatchSize"] == {"Type": "COPY_COUNT", "Value": 1}

    target = _one(reqs, "RegisterScalableTarget")["params"]
    assert target["ResourceId"] == f"inference-component/{name}"
    assert target["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (settings["min_copies"],
                                                              settings["max_copies"])
    policy = _one(reqs, "PutScalingPolicy", PolicyType="TargetTrackingScaling")["params"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution")
    # one copy is one DJL worker on its own accelerators: it runs its share of the workload
    # (concurrency over the copies it starts with), and scaling tracks that batch, capped by
    # what the plan says a copy holds, less endpoint mode's 20 % headroom
    concurrency = yaml.safe_load(Path(config).read_text())["workload"]["concurrency"]
    batch = math.ceil(concurrency / settings["copies"])
    assert f"option.max_rolling_batch_size={batch}\n" in report["serving_properties"]
    model = _one(reqs, "CreateModel")["params"]
    env = (model.get("PrimaryContainer") or {}).get("Environment") or {}
    assert env.get("OPTION_MAX_ROLLING_BATCH_SIZE", str(batch)) == str(batch)
    ceiling = min(batch, chosen["max_concurrency_per_copy"])
    assert tracking["TargetValue"] == math.floor(ceiling * 0.8)
    assert report["component"]["batch_per_copy"] == batch

    # promotion: rolling, its peak bounded by the managed maximum (counted like a redeploy)
    plan_ = report["promotion_plan"]
    assert plan_["strategy"] == "ROLLING"
    assert plan_["peak_instances"] == {"ml.g5.12xlarge": 2 * variant["ManagedInstanceScaling"][
        "MaxInstanceCount"]}

    # the smoke test and benchmark go to the candidate's component
    for op in ("InvokeEndpoint", "InvokeEndpointWithResponseStream"):
        first = next(r for r in reqs if r["operation"] == op)
        assert first["params"]["InferenceComponentName"] == candidate


def test_scale_to_zero_has_a_way_back(capsys):
    reqs = _dry_run(capsys, LLAMA)["requests"]  # min_copies 0
    step = _one(reqs, "PutScalingPolicy", PolicyType="StepScaling")["params"]
    alarm = _one(reqs, "PutMetricAlarm")["params"]
    assert alarm["MetricName"] == "NoCapacityInvocationFailures"
    assert alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": "llama-3-1-8b"}]
    assert alarm["AlarmActions"][0].endswith(f"policyName/{step['PolicyName']}")
    # Mistral keeps two copies: no step policy, no alarm
    reqs = _dry_run(capsys, MISTRAL)["requests"]
    assert not [r for r in reqs if r["operation"] in ("PutMetricAlarm",)]
    assert [r["params"]["PolicyType"] for r in reqs
            if r["operation"] == "PutScalingPolicy"] == ["TargetTrackingScaling"]


def test_packing_counts_the_other_component(capsys):
    alone = _dry_run(capsys, LLAMA)["component"]["packing"]
    shared = _dry_run(capsys, LLAMA, "--alongside", MISTRAL)["component"]["packing"]
    # ml.g5.12xlarge has 4 A10G. Llama alone at max_copies 2 (tp 1): one instance. With
    # Mistral's 3 copies (tp 1) too: 5 accelerators, so two instances: first-fit decreasing
    # puts llama's two copies first (larger weights), then two of Mistral's, then the third
    # on a second instance.
    assert len(alone["instances"]) == 1
    assert [i["copies"] for i in shared["instances"]] == [
        {"llama-3-1-8b": 2, "mistral-7b": 2}, {"mistral-7b": 1}]


def test_text_dry_run_shows_the_packing(capsys):
    assert main(["deploy", LLAMA, "--dry-run", "--alongside", MISTRAL]) == 0
    out = capsys.readouterr().out
    assert "packing at max copies with mistral-7b (2 instance(s)):" in out
    assert "llama-3-1-8b x2, mistral-7b x2" in out
    # 80 columns, but for identifiers printed whole on their own line (the image URI)
    assert max(len(line) for line in out.splitlines() if " " in line.strip()) <= 80


def _variant(tmp_path, base: str, filename: str, **changes) -> str:
    data = yaml.safe_load(Path(base).read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("changes, alongside, field", [
    ({"inference_component.min_copies": 3}, False, "inference_component.min_copies"),
    ({"inference_component.min_instances": 3}, False, "inference_component.min_instances"),
    ({"inference_component.min_copies": 1, "inference_component.min_instances": 0}, False,
     "inference_component.min_instances"),
    ({"target.kind": "local"}, False, "target.mode"),
    ({"promotion.strategy": "CANARY"}, False, "promotion.strategy"),
    ({"inference_component.cpu_cores": 64.0}, False, "inference_component.cpu_cores"),
    # Llama 2 + Mistral 3 copies need two 4-GPU instances
    ({"inference_component.max_instances": 1}, True, "inference_component.max_instances"),
    # one copy holds 9 of these requests within the gates: 24 at once need more than one
    ({"workload.concurrency": 24}, False, "inference_component.copies"),
])
def test_bad_numbers_exit_2_naming_the_field(tmp_path, capsys, changes, alongside, field):
    cfg = _variant(tmp_path, LLAMA, "bad.yaml", **changes)
    args = ["deploy", cfg, "--dry-run"] + (["--alongside", MISTRAL] if alongside else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lmiflow: error: {field}"), err


def test_alongside_must_name_the_same_endpoint(tmp_path, capsys):
    other = _variant(tmp_path, MISTRAL, "other.yaml", name="another-endpoint")
    assert main(["deploy", LLAMA, "--dry-run", "--alongside", other]) == 2
    assert "--alongside" in capsys.readouterr().err


def test_alongside_needs_a_component_mode_config(capsys):
    endpoint_mode = str(ROOT / "configs" / "llama-3.1-8b-g5-g6.yaml")
    assert main(["deploy", endpoint_mode, "--dry-run", "--alongside", MISTRAL]) == 2
    assert "lmiflow: error: --alongside" in capsys.readouterr().err
