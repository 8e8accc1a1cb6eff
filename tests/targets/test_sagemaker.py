"""SageMaker target without AWS: botocore Stubber (every request checked against the real
service model, plus the bounds and patterns Stubber itself skips), fake HTTP responses through
botocore's `before-send` hook where botocore's own retry and event-stream code must run, and
moto for S3 staging and the create/describe/delete lifecycle.

Nothing here can reach AWS: fake credentials, no config files, and AWS_ENDPOINT_URL points at a
closed local port for everything that is not stubbed or mocked.
"""

from __future__ import annotations

import binascii
import inspect
import io
import itertools
import json
import logging
import re
import struct

import boto3
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.stub import Stubber

from lmiflow.serving.properties import ServingProperties, render, to_env
from lmiflow.targets.base import (
    EndpointBusy,
    EndpointVariant,
    Target,
    TrafficPolicy,
    WaitTimeout,
)
from lmiflow.targets.sagemaker import SageMakerTarget
from lmiflow.targets.sagemaker_requests import deployment_config, lmi_image_uri, sizing_timeouts
from lmiflow.targets.sagemaker_stream import StreamError, iter_json_lines
from tests.aws_fakes import no_aws

resource_names = Target.resource_names


def delete_all(target, names):
    """The candidate's three deletes, endpoint first (it uses the other two)."""
    return {kind: delete(names[kind]) for kind, delete in (
        ("endpoint", target.delete_endpoint),
        ("endpoint_config", target.delete_endpoint_config),
        ("model", target.delete_model))}

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/lmiflow-test"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.33.0-lmi15.0.0-cu128"
NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:endpoint/"
MODEL_ARN = "arn:aws:sagemaker:us-east-1:123456789012:model/"
EC_ARN = "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/"


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch, tmp_path):
    no_aws(monkeypatch, tmp_path, REGION)


def _props(model_id: str, revision: str | None = None, tensor_parallel_degree: int = 1,
           max_batch: int = 8, max_model_len: int = 8192, dtype: str = "bf16"
           ) -> ServingProperties:
    """An async-vLLM serving.properties (what a plan renders: tests/serving)."""
    return ServingProperties(
        model_id=model_id, revision=revision, entry_point="djl_python.lmi_vllm.vllm_async_service",
        async_mode=True, rolling_batch="disable", tensor_parallel_degree=tensor_parallel_degree,
        max_rolling_batch_size=max_batch, max_model_len=max_model_len, dtype=dtype,
        gpu_memory_utilization=0.9)


# ---- deep request validation ---------------------------------------------------------------

SM_MODEL = botocore.session.get_session().get_service_model("sagemaker")


def _fullmatch(pattern: str, value: str) -> bool:
    """AWS patterns are Java regexes; tag patterns use \\p{L}, which `re` lacks (`regex` has it,
    but it is not a declared dependency): map the Unicode classes to `re` supersets."""
    try:
        import regex

        return regex.fullmatch(pattern, value) is not None
    except ImportError:
        py = pattern.replace(r"\p{L}", r"\w").replace(r"\p{N}", r"\d").replace(r"\p{Z}", r"\s")
        return re.fullmatch(py, value) is not None


def deep_errors(shape, value, path="") -> list[str]:
    """max / min / pattern / enum of the service model: what Stubber's validator skips."""
    md, t, out = shape.metadata, shape.type_name, []
    if t == "structure":
        for k, v in value.items():
            out += deep_errors(shape.members[k], v, f"{path}.{k}")
    elif t in ("list", "map"):
        if not md.get("min", 0) <= len(value) <= md.get("max", 10**9):
            out.append(f"{path}: {len(value)} items outside {md}")
        if t == "list":
            for i, v in enumerate(value):
                out += deep_errors(shape.member, v, f"{path}[{i}]")
        else:
            for k, v in value.items():
                out += deep_errors(shape.key, k, f"{path}<key>")
                out += deep_errors(shape.value, v, f"{path}[{k}]")
    elif t == "string":
        if not md.get("min", 0) <= len(value) <= md.get("max", 10**9):
            out.append(f"{path}: length {len(value)} outside {md}")
        if "enum" in md and value not in md["enum"]:
            out.append(f"{path}: {value!r} not in {md['enum']}")
        if "pattern" in md and not _fullmatch(md["pattern"], value):
            out.append(f"{path}: {value!r} does not match {md['pattern']}")
    elif t in ("integer", "long", "float", "double") and not (
        md.get("min", -(10**18)) <= value <= md.get("max", 10**18)
    ):
        out.append(f"{path}: {value} outside {md}")
    return out


def test_deep_validator_catches_what_stubber_skips():
    shape = SM_MODEL.operation_model("CreateEndpointConfig").input_shape
    bad = {"EndpointConfigName": "bad_name", "ProductionVariants": [{
        "VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.g5.xlarge",
        "VolumeSizeInGB": 600, "ContainerStartupHealthCheckTimeoutInSeconds": 30}],
        "Tags": [{"Key": "k", "Value": "a\nb"}]}
    errors = deep_errors(shape, bad)
    assert len(errors) == 4, errors


class RequestLog:
    """Records every SageMaker request and fails on any deep validation error."""

    def __init__(self, client):
        self.calls: list[tuple[str, dict]] = []
        self.errors: list[str] = []
        client.meta.events.register("before-parameter-build.sagemaker", self._hook)

    def _hook(self, params, model, **_):
        self.calls.append((model.name, params))
        self.errors += deep_errors(model.input_shape, params, model.name)

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]


class Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


_SHARED: list = []


def _session(fresh: bool = False):
    """A boto3 session with fake credentials. Stubbed tests share one (its loader caches the
    large SageMaker service model); moto tests need a fresh one, created after moto is
    imported, so that moto's request hook is in it."""
    if fresh:
        return boto3.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
    if not _SHARED:
        _SHARED.append(_session(fresh=True))
    return _SHARED[0]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def target(clock):
    return SageMakerTarget(
        REGION, role_arn=ROLE, s3_uri="s3://lmiflow-bucket/models/", session=_session(),
        poll_interval_s=30, clock=clock, sleep=clock.sleep,
    )


@pytest.fixture
def sm(target):
    log = RequestLog(target.sm)
    with Stubber(target.sm) as stub:
        yield stub, log
        stub.assert_no_pending_responses()
    assert log.errors == []


def _described(name, status, reason=None, config="cfg-1"):
    d = {
        "EndpointName": name, "EndpointArn": ARN + name, "EndpointConfigName": config,
        "EndpointStatus": status, "CreationTime": "2026-01-01T00:00:00Z",
        "LastModifiedTime": "2026-01-01T00:00:00Z",
    }
    if reason:
        d["FailureReason"] = reason
    return d


def _missing(stub, op, what, params):
    stub.add_client_error(
        op, service_error_code="ValidationException",
        service_message=f'Could not find {what} "{ARN}x".', http_status_code=400,
        expected_params=params,
    )


# ---- pure helpers -------------------------------------------------------------------------


def test_resource_names_are_valid_deterministic_and_distinct():
    names = resource_names("llama-2-13b-prod", "0123456789abcdef")
    assert names == {
        "endpoint": "llama-2-13b-prod-c-01234567",
        "endpoint_config": "llama-2-13b-prod-ec-01234567",
        "model": "llama-2-13b-prod-m-01234567",
    }
    assert resource_names("llama-2-13b-prod", "0123456789abcdef") == names
    assert resource_names("llama-2-13b-prod", "fedcba9876543210")["model"] != names["model"]
    long = resource_names("a" * 62 + "-b", "ABCDEF0123")
    for n in long.values():
        assert _fullmatch(NAME_PATTERN, n) and len(n) <= 63, n
    with pytest.raises(ValueError, match="endpoint name"):
        resource_names("bad_name", "0123456789")
    with pytest.raises(ValueError, match="spec_hash"):
        resource_names("ok", "abc")


@pytest.mark.parametrize("weights", [0, 1, 2 * 10**9, 26 * 10**9, 141 * 10**9, 10**13])
def test_sizing_timeouts_within_api_bounds(weights):
    volume, download, startup = sizing_timeouts(weights)
    assert 1 <= volume <= 512
    assert 60 <= download <= 3600 and 60 <= startup <= 3600
    # a bigger model never gets less disk or time
    v2, d2, s2 = sizing_timeouts(weights * 2 + 10**9)
    assert v2 >= volume and d2 >= download and s2 >= startup


def test_sizing_timeouts_grow_with_the_model():
    small, large = sizing_timeouts(2 * 10**9), sizing_timeouts(141 * 10**9)
    assert large[0] > small[0] and large[2] > small[2]
    assert large[0] >= 141 * 1.5  # room for a 70B fp16 checkpoint and a copy


@pytest.mark.parametrize(
    ("policy", "routing"),
    [
        (TrafficPolicy(), {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}),
        (
            TrafficPolicy(type="CANARY", canary_size_pct=10, wait_interval_s=300),
            {"Type": "CANARY", "WaitIntervalInSeconds": 300,
             "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}},
        ),
        (
            TrafficPolicy(type="LINEAR", linear_step_pct=25, wait_interval_s=600),
            {"Type": "LINEAR", "WaitIntervalInSeconds": 600,
             "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25}},
        ),
    ],
)
def test_deployment_config_matches_service_model(policy, routing):
    policy = policy.model_copy(update={"alarms": ["p99-latency", "5xx-rate"]})
    cfg = deployment_config(policy)
    assert cfg["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"] == routing
    assert cfg["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": "p99-latency"}, {"AlarmName": "5xx-rate"}]
    }
    shape = SM_MODEL.shape_for("DeploymentConfig")
    assert deep_errors(shape, cfg) == []
    from botocore.validate import ParamValidator

    assert not ParamValidator().validate(cfg, shape).has_errors()


def test_deployment_config_without_alarms_has_no_rollback_and_rejects_bad_bounds():
    assert "AutoRollbackConfiguration" not in deployment_config(TrafficPolicy())
    with pytest.raises(ValueError, match="canary_size_pct"):
        deployment_config(TrafficPolicy(type="CANARY", canary_size_pct=60))
    with pytest.raises(ValueError, match="linear_step_pct"):
        deployment_config(TrafficPolicy(type="LINEAR", linear_step_pct=5))
    with pytest.raises(ValueError, match="wait_interval_s"):
        deployment_config(TrafficPolicy(wait_interval_s=4000))


def _lines() -> list[bytes]:
    return [
        json.dumps({"token": {"id": 1, "text": "Hel", "log_prob": -0.1}}).encode(),
        json.dumps({"token": {"id": 2, "text": "lo\n", "log_prob": -0.2}}).encode(),
        json.dumps({"token": {"id": 3, "text": "é", "log_prob": -0.3},
                    "generated_text": "Hello\né", "details": {"finish_reason": "length"}},
                   ensure_ascii=False).encode(),
    ]


def test_iter_json_lines_reassembles_at_every_split_point():
    lines = _lines()
    data = b"\n".join(lines) + b"\n"
    n = len(data)
    for i in range(n + 1):
        for j in range(i, n + 1, 7):
            assert list(iter_json_lines([data[:i], data[i:j], data[j:]])) == lines, (i, j)
    assert list(iter_json_lines(bytes([b]) for b in data)) == lines
    for line in iter_json_lines([data]):
        json.loads(line)


def test_iter_json_lines_keeps_a_last_line_without_newline_and_skips_blank_lines():
    lines = _lines()
    data = b"\r\n\n".join(lines)
    assert list(iter_json_lines([data[:5], data[5:]])) == lines
    assert list(iter_json_lines([])) == []


def test_lmi_image_uri_offline():
    assert lmi_image_uri("us-west-2", "0.33.0") == (
        "763104351884.dkr.ecr.us-west-2.amazonaws.com/djl-inference:0.33.0-lmi15.0.0-cu128"
    )
    latest = lmi_image_uri("eu-west-1")
    assert latest.startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/djl-inference:")
    with pytest.raises(ValueError, match="image_version"):
        lmi_image_uri("us-east-1", "0.0.1")


# ---- the target with Stubber --------------------------------------------------------------


def test_implements_the_target_protocol_exactly(target):
    assert isinstance(target, Target)
    for name, member in inspect.getmembers(Target, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = inspect.signature(getattr(SageMakerTarget, name))
        theirs = inspect.signature(member)
        assert list(ours.parameters) == list(theirs.parameters), name


def test_clients_retry_on_the_control_plane_but_never_on_invocations(target):
    retries = target.sm.meta.config.retries
    assert retries["mode"] == "standard" and retries["total_max_attempts"] >= 3
    rt = target.runtime.meta.config
    assert rt.retries["total_max_attempts"] == 1
    assert rt.read_timeout >= 70
    with pytest.raises(ValueError, match="70"):
        SageMakerTarget(REGION, session=_session(), invoke_read_timeout_s=30)


def test_create_and_wait_in_service_requests(target, sm, clock, caplog):
    stub, log = sm
    props = _props("meta-llama/Llama-2-13b-hf", tensor_parallel_degree=2, max_batch=4,
                   max_model_len=4096, dtype="fp16")
    tags = {"spec-hash": "0123456789abcdef", "run-id": "run-1"}
    expect_tags = [
        {"Key": "project", "Value": "lmiflow"},
        {"Key": "spec-hash", "Value": "0123456789abcdef"},
        {"Key": "run-id", "Value": "run-1"},
    ]
    names = resource_names("llama-prod", "0123456789abcdef")
    s3 = Stubber(target.s3)
    s3.add_response(
        "put_object", {},
        {"Bucket": "lmiflow-bucket", "Key": f"models/{names['model']}/serving.properties",
         "Body": render(props).encode(), "ContentType": "text/plain; charset=utf-8"},
    )
    with s3:
        uri = target.stage(names["model"], {"serving.properties": render(props)})
    s3.assert_no_pending_responses()
    assert uri == f"s3://lmiflow-bucket/models/{names['model']}/"

    stub.add_response("create_model", {"ModelArn": MODEL_ARN + "m"}, {
        "ModelName": names["model"], "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {
            "Image": IMAGE, "Environment": {},
            "ModelDataSource": {"S3DataSource": {
                "S3Uri": uri, "S3DataType": "S3Prefix", "CompressionType": "None"}},
        },
        "Tags": expect_tags,
    })
    target.create_model(names["model"], uri, IMAGE, {}, tags)

    vol, dl, start = sizing_timeouts(26 * 10**9)
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": EC_ARN + "ec"}, {
        "EndpointConfigName": names["endpoint_config"],
        "ProductionVariants": [{
            # ml.g5 has local NVMe storage: SageMaker rejects VolumeSizeInGB there
            "VariantName": "AllTraffic", "ModelName": names["model"],
            "InstanceType": "ml.g5.12xlarge", "InitialInstanceCount": 1,
            "ModelDataDownloadTimeoutInSeconds": dl,
            "ContainerStartupHealthCheckTimeoutInSeconds": start,
            "InferenceAmiVersion": "al2023-ami-sagemaker-inference-gpu-4-1",
            "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
        }],
        "Tags": expect_tags,
    })
    target.create_endpoint_config(
        names["endpoint_config"], names["model"],
        EndpointVariant(instance_type="ml.g5.12xlarge", volume_size_gb=vol,
                        model_data_download_timeout_s=dl,
                        container_startup_health_check_timeout_s=start,
                        inference_ami_version="al2023-ami-sagemaker-inference-gpu-4-1"),
        tags,
    )
    stub.add_response("create_endpoint", {"EndpointArn": ARN + names["endpoint"]}, {
        "EndpointName": names["endpoint"], "EndpointConfigName": names["endpoint_config"],
        "Tags": expect_tags,
    })
    target.create_endpoint(names["endpoint"], names["endpoint_config"], tags)

    for status in ("Creating", "Creating", "Creating", "InService"):
        stub.add_response("describe_endpoint", _described(names["endpoint"], status),
                          {"EndpointName": names["endpoint"]})
    seen = []
    with caplog.at_level(logging.INFO, logger="lmiflow.targets.sagemaker"):
        st = target.wait(names["endpoint"], 3600, on_status=lambda s, t: seen.append((s.status, t)))
    assert st.status == "InService" and st.config_name == "cfg-1"
    assert seen == [("Creating", 0.0), ("InService", 90.0)]
    assert clock.sleeps == [30, 30, 30]
    assert "InService after 90 s" in caplog.text
    assert log.ops() == [
        "CreateModel", "CreateEndpointConfig", "CreateEndpoint",
        "DescribeEndpoint", "DescribeEndpoint", "DescribeEndpoint", "DescribeEndpoint",
    ]


def test_volume_size_sent_for_ebs_instances(target, sm):
    stub, _ = sm
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": EC_ARN + "ec"}, {
        "EndpointConfigName": "ec", "ProductionVariants": [{
            "VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.m5.xlarge",
            "InitialInstanceCount": 2, "VolumeSizeInGB": 512}],
        "Tags": [{"Key": "project", "Value": "lmiflow"}],
    })
    target.create_endpoint_config(  # routing left to the platform when asked
        "ec", "m", EndpointVariant(instance_type="ml.m5.xlarge", instance_count=2,
                                   volume_size_gb=512, routing_strategy=None), {})
    with pytest.raises(ValueError, match="volume_size_gb"):
        target.create_endpoint_config(
            "ec", "m", EndpointVariant(instance_type="ml.m5.xlarge", volume_size_gb=600), {})
    with pytest.raises(ValueError, match="container_startup"):
        target.create_endpoint_config("ec", "m", EndpointVariant(
            instance_type="ml.g5.xlarge", container_startup_health_check_timeout_s=5000), {})


def test_creating_to_failed_surfaces_reason_and_candidate_is_deleted(target, sm, caplog):
    stub, log = sm
    names = resource_names("llama-prod", "abcdef0123456789")
    reason = "The primary container for production variant AllTraffic did not pass the ping"
    stub.add_response("describe_endpoint", _described(names["endpoint"], "Creating"),
                      {"EndpointName": names["endpoint"]})
    stub.add_response("describe_endpoint", _described(names["endpoint"], "Failed", reason),
                      {"EndpointName": names["endpoint"]})
    with caplog.at_level(logging.INFO, logger="lmiflow.targets.sagemaker"):
        st = target.wait(names["endpoint"], 3600)
    assert st.status == "Failed" and st.failure_reason == reason
    assert reason in caplog.text

    stub.add_response("delete_endpoint", {}, {"EndpointName": names["endpoint"]})
    stub.add_response("delete_endpoint_config", {},
                      {"EndpointConfigName": names["endpoint_config"]})
    _missing(stub, "delete_model", "model", {"ModelName": names["model"]})
    done = delete_all(target, names)
    assert done == {"endpoint": True, "endpoint_config": True, "model": False}
    assert log.ops()[-3:] == ["DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]


def test_wait_times_out_with_configurable_interval(clock):
    target = SageMakerTarget(REGION, session=_session(), poll_interval_s=7, clock=clock,
                             sleep=clock.sleep)
    with Stubber(target.sm) as stub:
        for _ in range(4):
            stub.add_response("describe_endpoint", _described("e", "Creating"),
                              {"EndpointName": "e"})
        with pytest.raises(WaitTimeout, match="still Creating"):
            target.wait("e", 20)
        stub.assert_no_pending_responses()
    assert clock.sleeps == [7, 7, 6]


def test_describe_missing_is_none_other_errors_raise(target, sm):
    stub, _ = sm
    _missing(stub, "describe_endpoint", "endpoint", {"EndpointName": "gone"})
    assert target.describe("gone") is None
    stub.add_client_error("describe_endpoint", "AccessDeniedException", "no", 400,
                          expected_params={"EndpointName": "secret"})
    with pytest.raises(ClientError, match="AccessDenied"):
        target.describe("secret")
    stub.add_response("describe_endpoint", _described("e", "InService"), {"EndpointName": "e"})
    stub.add_response("list_tags", {"Tags": [{"Key": "project", "Value": "lmiflow"},
                                             {"Key": "spec-hash", "Value": "abc"}]},
                      {"ResourceArn": ARN + "e"})
    st = target.describe("e")
    assert st.tags == {"project": "lmiflow", "spec-hash": "abc"}


def test_deletes_return_false_when_missing(target, sm):
    stub, _ = sm
    _missing(stub, "delete_endpoint", "endpoint", {"EndpointName": "x"})
    _missing(stub, "delete_endpoint_config", "endpoint configuration",
             {"EndpointConfigName": "x"})
    _missing(stub, "delete_model", "model", {"ModelName": "x"})
    assert target.delete_endpoint("x") is False
    assert target.delete_endpoint_config("x") is False
    assert target.delete_model("x") is False
    stub.add_client_error("delete_model", "ThrottlingException", "slow down", 400,
                          expected_params={"ModelName": "x"})
    with pytest.raises(ClientError, match="Throttling"):
        target.delete_model("x")


@pytest.mark.parametrize("busy", ["Creating", "Updating", "SystemUpdating", "RollingBack"])
def test_update_refuses_busy_endpoint(target, sm, busy):
    stub, log = sm
    stub.add_response("describe_endpoint", _described("prod", busy), {"EndpointName": "prod"})
    with pytest.raises(EndpointBusy, match=busy):
        target.update_endpoint("prod", "prod-ec-01234567")
    assert "UpdateEndpoint" not in log.ops()


def test_update_sends_blue_green_config(target, sm):
    stub, _ = sm
    policy = TrafficPolicy(type="LINEAR", linear_step_pct=20, wait_interval_s=300,
                           termination_wait_s=120, alarms=["lmiflow-p99"])
    stub.add_response("describe_endpoint", _described("prod", "InService"),
                      {"EndpointName": "prod"})
    stub.add_response("update_endpoint", {"EndpointArn": ARN + "prod"}, {
        "EndpointName": "prod", "EndpointConfigName": "prod-ec-01234567",
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {
                    "Type": "LINEAR", "WaitIntervalInSeconds": 300,
                    "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 20}},
                "TerminationWaitInSeconds": 120,
            },
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "lmiflow-p99"}]},
        },
    })
    target.update_endpoint("prod", "prod-ec-01234567", policy)
    _missing(stub, "describe_endpoint", "endpoint", {"EndpointName": "none"})
    with pytest.raises(LookupError):
        target.update_endpoint("none", "prod-ec-01234567")


def test_create_adopts_existing_resources(target, sm):
    stub, _ = sm
    stub.add_client_error(
        "create_model", "ValidationException",
        f'Cannot create already existing model "{ARN}m".', 400, expected_params={
            "ModelName": "m", "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {
                "Image": IMAGE, "Environment": {},
                "ModelDataSource": {"S3DataSource": {
                    "S3Uri": "s3://b/p/m/", "S3DataType": "S3Prefix",
                    "CompressionType": "None"}}},
            "Tags": [{"Key": "project", "Value": "lmiflow"}]})
    target.create_model("m", "s3://b/p/m/", IMAGE, {}, {})
    create_e = {"EndpointName": "e", "EndpointConfigName": "ec",
                "Tags": [{"Key": "project", "Value": "lmiflow"}]}
    stub.add_client_error(
        "create_endpoint", "ValidationException",
        f'Cannot create already existing endpoint "{ARN}e".', 400, expected_params=create_e)
    target.create_endpoint("e", "ec", {})
    stub.add_client_error("create_endpoint", "ResourceLimitExceeded", "quota", 400,
                          expected_params=create_e)
    with pytest.raises(ClientError, match="ResourceLimitExceeded"):
        target.create_endpoint("e", "ec", {})


def test_env_only_model_has_no_model_data_source(target, sm):
    stub, _ = sm
    props = _props("meta-llama/Llama-3.1-8B-Instruct")
    env = to_env(props)
    stub.add_response("create_model", {"ModelArn": MODEL_ARN + "m"}, {
        "ModelName": "m", "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": IMAGE, "Environment": env},
        "Tags": [{"Key": "project", "Value": "lmiflow"}],
    })
    target.create_model("m", "", IMAGE, env, {})
    with pytest.raises(ValueError, match="HF_MODEL_ID"):
        target.create_model("m", "", IMAGE, {"OPTION_DTYPE": "bf16"}, {})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "bad_name"}, "model name"),
        ({"model_data": "s3://b/no-slash"}, "model_data"),
        ({"env": {"BAD-KEY": "x"}}, "BAD-KEY"),
        ({"tags": {"aws:reserved": "x"}}, "aws:reserved"),
        ({"tags": {"k": "line\nbreak"}}, "tag k"),
    ],
)
def test_create_model_rejects_bad_input_before_any_call(target, sm, kwargs, match):
    args = {"name": "m", "model_data": "s3://b/p/", "image_uri": IMAGE, "env": {}, "tags": {}}
    with pytest.raises(ValueError, match=match):
        target.create_model(**(args | kwargs))
    assert sm[1].calls == []


def test_stage_rejects_path_tricks_and_needs_s3_uri(target):
    with pytest.raises(ValueError, match="file name"):
        target.stage("m", {"serving.properties": "", "../evil": "x"})
    with pytest.raises(ValueError, match=r"serving\.properties"):
        target.stage("m", {"other.txt": "x"})
    with pytest.raises(ValueError, match="s3_uri"):
        SageMakerTarget(REGION, session=_session()).stage("m", {"serving.properties": ""})


def test_list_resources_paginates_and_filters_prefix(target, sm):
    stub, _ = sm
    t0 = "2026-01-01T00:00:00Z"
    stub.add_response("list_models", {
        "Models": [
            {"ModelName": "llama-prod-m-1", "ModelArn": MODEL_ARN + "1", "CreationTime": t0}
        ],
        "NextToken": "page2"}, {"NameContains": "llama-prod"})
    stub.add_response("list_models", {
        "Models": [{"ModelName": "llama-prod-m-2", "ModelArn": MODEL_ARN + "2", "CreationTime": t0},
                   {"ModelName": "x-llama-prod", "ModelArn": MODEL_ARN + "3", "CreationTime": t0}]},
        {"NameContains": "llama-prod", "NextToken": "page2"})
    stub.add_response("list_endpoint_configs", {"EndpointConfigs": []},
                      {"NameContains": "llama-prod"})
    stub.add_response("list_endpoints", {"Endpoints": [{
        "EndpointName": "llama-prod", "EndpointArn": ARN + "llama-prod", "CreationTime": t0,
        "LastModifiedTime": t0, "EndpointStatus": "InService"}]},
        {"NameContains": "llama-prod"})
    assert target.list_resources("llama-prod") == {
        "models": ["llama-prod-m-1", "llama-prod-m-2"],
        "endpoint_configs": [],
        "endpoints": ["llama-prod"],
    }


# ---- botocore's own retry and event-stream code, through fake HTTP responses ---------------


class _Raw(io.BytesIO):
    def stream(self, amt=1024, decode_content=None):
        while chunk := self.read(amt):
            yield chunk


class FakeHTTP:
    """Answers botocore's `before-send` with queued (status, headers, body) responses, so
    botocore's retry handler and parsers run as they do against AWS."""

    def __init__(self, client, responses):
        self.responses = list(responses)
        self.sent: list[str] = []
        client.meta.events.register("before-send", self)

    def __call__(self, request, **_):
        self.sent.append(request.headers.get("X-Amz-Target", b"").decode() or request.url)
        status, headers, body = self.responses.pop(0)
        return AWSResponse(request.url, status, headers, _Raw(body))


def _json(status, obj):
    return status, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(obj).encode()


def test_throttling_then_success_is_retried_by_botocore(clock, monkeypatch):
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, ctx: 0)
    target = SageMakerTarget(REGION, session=_session(), poll_interval_s=1, clock=clock,
                             sleep=clock.sleep)
    throttled = _json(400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
    http = FakeHTTP(target.sm, [
        throttled, throttled,
        _json(200, _described("e", "InService") | {"CreationTime": 0, "LastModifiedTime": 0}),
    ])
    assert target.wait("e", 60).status == "InService"
    assert http.sent == ["SageMaker.DescribeEndpoint"] * 3
    assert clock.sleeps == []  # retried inside botocore, not by the poll loop

    http.responses = [throttled] * 5
    with pytest.raises(ClientError, match="Throttling"):
        target.wait("e", 60)
    assert len(http.sent) == 3 + 5  # total_max_attempts=5, then the error surfaces


def test_invocations_are_never_retried():
    target = SageMakerTarget(REGION, session=_session())
    http = FakeHTTP(target.runtime, [
        _json(503, {"__type": "ServiceUnavailable", "message": "busy"}),
        _json(200, {}),
    ])
    with pytest.raises(ClientError, match="ServiceUnavailable"):
        target.invoke("e", {"inputs": "hi"})
    assert len(http.sent) == 1


def _event(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message (prelude, string headers, payload, CRCs)."""
    h = b""
    for k, v in headers.items():
        kb, vb = k.encode(), v.encode()
        h += struct.pack("B", len(kb)) + kb + b"\x07" + struct.pack(">H", len(vb)) + vb
    prelude = struct.pack(">II", 12 + len(h) + len(payload) + 4, len(h))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    msg = prelude + h + payload
    return msg + struct.pack(">I", binascii.crc32(msg))


def _part(b: bytes) -> bytes:
    return _event({":message-type": "event", ":event-type": "PayloadPart",
                   ":content-type": "application/octet-stream"}, b)


def _stream(body: bytes):
    return 200, {"Content-Type": "application/vnd.amazon.eventstream"}, body


def test_invoke_stream_reassembles_payload_parts():
    target = SageMakerTarget(REGION, session=_session())
    lines = _lines()
    data = b"\n".join(lines) + b"\n"
    cuts = [0, 3, 4, 40, 41, len(lines[0]) + 1, 100, len(data)]
    parts = b"".join(_part(data[a:b]) for a, b in itertools.pairwise(cuts))
    http = FakeHTTP(target.runtime, [_stream(parts)])
    assert list(target.invoke_stream("e", {"inputs": "hi"})) == lines
    assert http.sent and "invocations-response-stream" in http.sent[0]


def test_invoke_stream_surfaces_model_stream_error_after_good_lines():
    target = SageMakerTarget(REGION, session=_session())
    body = _part(b'{"token": {"text": "a"}}\n{"tok') + _event(
        {":message-type": "exception", ":exception-type": "ModelStreamError",
         ":content-type": "application/json"},
        json.dumps({"Message": "CUDA out of memory", "ErrorCode": "500"}).encode(),
    )
    FakeHTTP(target.runtime, [_stream(body)])
    got = []
    with pytest.raises(StreamError, match="CUDA out of memory"):
        for line in target.invoke_stream("e", {"inputs": "hi"}):
            got.append(line)
    assert got == [b'{"token": {"text": "a"}}']


def test_invoke_sends_json_and_returns_body(target):
    body = b'{"generated_text": "hi"}'
    with Stubber(target.runtime) as stub:
        stub.add_response(
            "invoke_endpoint",
            {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"},
            {"EndpointName": "e", "ContentType": "application/json", "Accept": "application/json",
             "Body": json.dumps({"inputs": "hi", "parameters": {"max_new_tokens": 4}}).encode()},
        )
        assert target.invoke("e", {"inputs": "hi", "parameters": {"max_new_tokens": 4}}) == body


def test_credentials_block_is_loaded_lazily(monkeypatch):
    import prefect_aws

    loaded = []

    class FakeBlock:
        def get_boto3_session(self):
            return _session()

    def load(name):
        loaded.append(name)
        return FakeBlock()

    monkeypatch.setattr(prefect_aws.AwsCredentials, "load", staticmethod(load))
    target = SageMakerTarget(REGION, credentials_block="prod-aws")
    assert loaded == []
    assert target.sm.meta.region_name == REGION
    assert loaded == ["prod-aws"]


# ---- moto: S3 staging and the lifecycle ---------------------------------------------------


@pytest.fixture
def moto_target(monkeypatch):
    from moto import mock_aws

    monkeypatch.delenv("AWS_ENDPOINT_URL")  # moto answers the real AWS URLs in-process
    with mock_aws():
        session = _session(fresh=True)
        session.client("s3").create_bucket(Bucket="lmiflow-bucket")
        yield SageMakerTarget(REGION, role_arn=ROLE, s3_uri="s3://lmiflow-bucket/models",
                              session=session, poll_interval_s=0)


def test_moto_stage_create_describe_delete_lifecycle(moto_target):
    t = moto_target
    names = resource_names("mistral-prod", "0123456789abcdef")
    tags = {"spec-hash": "0123456789abcdef", "run-id": "r1"}
    props = _props("mistralai/Mistral-7B-Instruct-v0.3")
    uri = t.stage(names["model"], {"serving.properties": render(props), "README.txt": "x"})
    assert uri == f"s3://lmiflow-bucket/models/{names['model']}/"
    got = t.s3.get_object(Bucket="lmiflow-bucket",
                          Key=f"models/{names['model']}/serving.properties")
    assert got["Body"].read().decode() == render(props)

    t.create_model(names["model"], uri, IMAGE, {}, tags)
    container = t.sm.describe_model(ModelName=names["model"])["PrimaryContainer"]
    assert container["ModelDataSource"]["S3DataSource"] == {
        "S3Uri": uri, "S3DataType": "S3Prefix", "CompressionType": "None"}
    # moto's CreateEndpointConfig allow-list predates ml.g5/g6/p4d/p5 (it rejects them with a
    # ValidationException), so the lifecycle runs on ml.g4dn.xlarge, which it still accepts;
    # the g5 request shape is checked against the real service model in the Stubber tests.
    t.create_endpoint_config(names["endpoint_config"], names["model"],
                             EndpointVariant(instance_type="ml.g4dn.xlarge",
                                             model_data_download_timeout_s=600,
                                             container_startup_health_check_timeout_s=900),
                             tags)
    t.create_endpoint(names["endpoint"], names["endpoint_config"], tags)
    # moto makes endpoints InService at once: no Creating phase to walk here (Stubber does).
    st = t.wait(names["endpoint"], 10)
    assert st.status == "InService" and st.config_name == names["endpoint_config"]
    described = t.describe(names["endpoint"])
    assert described.tags == {"project": "lmiflow", **tags}
    assert t.list_resources("mistral-prod") == {
        "models": [names["model"]],
        "endpoint_configs": [names["endpoint_config"]],
        "endpoints": [names["endpoint"]],
    }
    assert [e.name for e in t.list_endpoints()] == [names["endpoint"]]

    assert delete_all(t, names) == {"endpoint": True, "endpoint_config": True,
                                          "model": True}
    assert t.describe(names["endpoint"]) is None
    assert delete_all(t, names) == {"endpoint": False, "endpoint_config": False,
                                          "model": False}
    assert t.list_resources("mistral-prod") == {"models": [], "endpoint_configs": [],
                                                "endpoints": []}


def test_moto_env_only_model(moto_target):
    props = _props("meta-llama/Llama-3.1-8B-Instruct", revision="main")
    moto_target.create_model("envonly", "", IMAGE, to_env(props), {})
    container = moto_target.sm.describe_model(ModelName="envonly")["PrimaryContainer"]
    assert "ModelDataSource" not in container
    # DJL creates the served model from HF_MODEL_ID (+ HF_REVISION), not from OPTION_MODEL_ID
    assert container["Environment"]["HF_MODEL_ID"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert container["Environment"]["HF_REVISION"] == "main"
    assert "OPTION_MODEL_ID" not in container["Environment"]


# ---- the example configs ------------------------------------------------------------------


def test_example_sagemaker_configs_validate_and_map_to_requests():
    from pathlib import Path

    from lmiflow.spec import load_spec

    root = Path(__file__).resolve().parents[2] / "configs"
    paths = sorted(p for p in root.glob("*.yaml") if p.name != "local-demo.yaml")
    assert {p.name for p in paths} >= {"llama-2-13b-worked-example.yaml", "mixtral-8x7b.yaml"}
    for path in paths:
        spec = load_spec(path)
        assert spec.target.kind == "sagemaker", path
        # a Hub id (what the container downloads) with a bundled snapshot for offline planning
        snapshots = {json.loads(m.read_text())["hub_id"]: m.parent
                     for m in (root / "models").glob("*/source.json")}
        assert (snapshots[spec.model.id] / "config.json").is_file(), path
        for name in resource_names(spec.name, "0123456789abcdef").values():
            assert _fullmatch(NAME_PATTERN, name), name
        p = spec.promotion
        cfg = deployment_config(TrafficPolicy(
            type=p.strategy, wait_interval_s=p.wait_interval_s, canary_size_pct=p.canary_size_pct,
            linear_step_pct=p.linear_step_pct, alarms=p.alarms))
        assert deep_errors(SM_MODEL.shape_for("DeploymentConfig"), cfg) == [], path
    worked = load_spec(root / "llama-2-13b-worked-example.yaml")
    assert (worked.model.dtype, worked.workload.max_input_tokens,
            worked.workload.max_output_tokens, worked.workload.concurrency) == ("fp16", 3072,
                                                                                1024, 4)


# ---- what the flow asks the target instead of branching on its kind ------------------------


def test_endpoint_variant_sizes_timeouts_and_leaves_volume_to_ebs_instances(target):
    # 26 GB of weights: disk 26 x 1.5 + 30 = 69 GB; download 600 + 260 s; start 600 + 520 s.
    ebs = target.endpoint_variant("ml.m5.xlarge", 2, 26 * 10**9)
    assert (ebs.instance_count, ebs.volume_size_gb, ebs.model_data_download_timeout_s,
            ebs.container_startup_health_check_timeout_s) == (2, 69, 860, 1120)
    nvme = target.endpoint_variant("ml.g5.12xlarge", 1, 26 * 10**9)  # local NVMe storage
    assert nvme.volume_size_gb is None and nvme.model_data_download_timeout_s == 860


def test_packaging_s3_uploads_and_env_passes_options(target):
    props = "engine=Python\noption.model_id=org/m\noption.tensor_parallel_degree=2\n"
    s3 = Stubber(target.s3)
    s3.add_response("put_object", {}, {"Bucket": "lmiflow-bucket",
                                       "Key": "models/m-1/serving.properties",
                                       "Body": props.encode(),
                                       "ContentType": "text/plain; charset=utf-8"})
    with s3:
        pkg = target.package("m-1", props)
    assert (pkg.model_data, pkg.env) == ("s3://lmiflow-bucket/models/m-1/", {})
    env_target = SageMakerTarget(REGION, role_arn=ROLE, session=_session(), packaging="env")
    pkg = env_target.package("m-1", props)  # no S3 client call: nothing stubbed
    assert pkg.model_data == ""
    assert pkg.env["HF_MODEL_ID"] == "org/m"
    assert pkg.env["OPTION_TENSOR_PARALLEL_DEGREE"] == "2"


def test_baseline_lives_under_the_s3_prefix(target):
    s3 = Stubber(target.s3)
    key = {"Bucket": "lmiflow-bucket", "Key": "models/prod/baseline.json"}
    s3.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404,
                        expected_params=key)
    body = json.dumps({"levels": []}, indent=2, sort_keys=True).encode()
    s3.add_response("put_object", {}, {**key, "Body": body, "ContentType": "application/json"})
    s3.add_response("get_object", {"Body": StreamingBody(io.BytesIO(body), len(body))}, key)
    with s3:
        assert target.load_baseline("prod") is None
        assert target.save_baseline("prod", {"levels": []}) == (
            "s3://lmiflow-bucket/models/prod/baseline.json")
        assert target.load_baseline("prod") == {"levels": []}
        s3.assert_no_pending_responses()
    no_store = SageMakerTarget(REGION, session=_session())
    assert no_store.load_baseline("prod") is None and no_store.save_baseline("prod", {}) is None


def _body(data: dict) -> dict:
    raw = json.dumps(data).encode()
    return {"Body": StreamingBody(io.BytesIO(raw), len(raw))}


def test_calibration_store_is_one_object_in_the_s3_prefix_replaced_only_if_unchanged(target):
    """Appends are compare-and-swap: created If-None-Match *, replaced If-Match the ETag read;
    a 412 (another run wrote in between) rereads and reapplies the change."""
    s3 = Stubber(target.s3)
    key = {"Bucket": "lmiflow-bucket", "Key": "models/calibration.json"}
    put = {**key, "ContentType": "application/json"}

    def append(data):  # this run's record, after whatever the store holds
        return {"records": [*(data or {}).get("records", []), "mine"]}

    # first append: no store yet, so it is created
    s3.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404,
                        expected_params=key)
    s3.add_response("put_object", {"ETag": '"e1"'}, {
        **put, "Body": json.dumps({"records": ["mine"]}, indent=1).encode(), "IfNoneMatch": "*"})
    # second: another run wrote after this one read, so S3 refuses; read again, reapply
    s3.add_response("get_object", {**_body({"records": ["mine"]}), "ETag": '"e1"'}, key)
    s3.add_client_error("put_object", service_error_code="PreconditionFailed",
                        http_status_code=412, expected_params={
                            **put, "Body": json.dumps({"records": ["mine", "mine"]},
                                                      indent=1).encode(),
                            "IfMatch": '"e1"'})
    both = {"records": ["mine", "theirs"]}
    s3.add_response("get_object", {**_body(both), "ETag": '"e2"'}, key)
    mine_after = {"records": ["mine", "theirs", "mine"]}
    s3.add_response("put_object", {"ETag": '"e3"'}, {
        **put, "Body": json.dumps(mine_after, indent=1).encode(), "IfMatch": '"e2"'})
    s3.add_response("get_object", {**_body(mine_after), "ETag": '"e3"'}, key)
    with s3:
        where = "s3://lmiflow-bucket/models/calibration.json"
        assert target.calibration_uri() == where
        assert target.update_calibration(append) == where
        assert target.update_calibration(append) == where
        assert target.load_calibration() == mine_after  # nobody's record lost
        s3.assert_no_pending_responses()


def test_calibration_store_gives_up_after_bounded_contention_and_never_reads_offline(target):
    from lmiflow.targets import s3_store
    from lmiflow.targets.base import StoreOffline

    s3 = Stubber(target.s3)
    key = {"Bucket": "lmiflow-bucket", "Key": "models/calibration.json"}
    for i in range(s3_store.MAX_TRIES):
        s3.add_response("get_object", {**_body({}), "ETag": f'"e{i}"'}, key)
        s3.add_client_error("put_object", service_error_code="PreconditionFailed",
                            http_status_code=412)
    with s3:
        with pytest.raises(s3_store.StoreContended, match="5 tries"):
            target.update_calibration(lambda data: {})
        with pytest.raises(StoreOffline, match="not by a dry run"):
            target.load_calibration(offline=True)  # no request queued: none may be sent
        s3.assert_no_pending_responses()
    no_store = SageMakerTarget(REGION, session=_session())
    assert no_store.calibration_uri() is None and no_store.load_calibration() is None
    assert no_store.update_calibration(lambda data: {}) is None


def test_planning_answers(target):
    assert target.serving_model_id("org/m", None) == "org/m"
    assert target.serving_engine("trtllm") == "trtllm"
    assert target.image_uri("vllm", None, "my/image:1") == "my/image:1"
    assert "djl-inference" in target.image_uri("vllm", "0.33.0", None)
    assert "tensorrtllm" in target.image_uri("trtllm", None, None)
    assert "ml.p5.48xlarge" in set(target.instance_catalog()["instance_type"])


# ---- benchmarking a SageMaker endpoint ----------------------------------------------------


def test_runtime_pool_holds_the_highest_concurrency(target):
    assert target.runtime.meta.config.max_pool_connections == 64  # botocore's default is 10
    target.reserve_invocations(200)
    assert target.runtime.meta.config.max_pool_connections == 200
    assert target.runtime.meta.config.retries["total_max_attempts"] == 1
    target.reserve_invocations(8)  # never shrinks
    assert target.runtime.meta.config.max_pool_connections == 200


def _moto_endpoint(t, name, model_data, env):
    t.create_model(name + "-m", model_data, IMAGE, env, {})
    t.create_endpoint_config(name + "-c", name + "-m",
                             EndpointVariant(instance_type="ml.g4dn.xlarge"), {})
    t.create_endpoint(name, name + "-c", {})


def test_moto_model_files_of_an_endpoint(moto_target, tmp_path):
    t = moto_target
    uri = t.stage("tok-m", {"serving.properties": "option.model_id=org/m\n"
                                                  "option.max_model_len=4096\n",
                            "tokenizer.json": "{}"})
    _moto_endpoint(t, "tok", uri, {})
    f = t.model_files("tok", tmp_path / "a", ["tokenizer.json", "config.json"])
    assert [p.name for p in f.directory.iterdir()] == ["tokenizer.json"]  # no config.json there
    assert f.properties == {"option.model_id": "org/m", "option.max_model_len": "4096"}
    # env packaging: only the few entries that name the model, never a secret
    _moto_endpoint(t, "envm", "", {"HF_MODEL_ID": "org/m", "OPTION_MAX_MODEL_LEN": "2048",
                                   "HF_TOKEN": "hf_secret", "OPTION_HF_TOKEN": "hf_secret"})
    f = t.model_files("envm", tmp_path / "b", ["tokenizer.json"])
    assert f.properties == {"option.model_id": "org/m", "option.max_model_len": "2048"}
    assert list(f.directory.iterdir()) == []
    assert t.model_files("nope", tmp_path / "c", []) is None
