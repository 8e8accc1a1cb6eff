"""The runner policy `lmiflow iam CONFIG` writes, judged by something other than the code that
writes it: every SageMaker config in configs/ is planned (a dry run), its runner policy taken
as the caller's only policy, and the preflight run against an IAM simulator that evaluates
that policy by IAM's rules (tests/iam_judge.py). The preflight must accept the policy it was
generated with, and refuse it, in one line naming the action, when any statement is missing.
Where S3 or Application Auto Scaling decide what a caller needs beyond the request's own
action, the test states the documented rule and where it is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmiflow import pipeline
from lmiflow.cli import main
from lmiflow.spec import load_spec
from lmiflow.targets.aws_preflight import AccessProblem
from lmiflow.targets.aws_requests import AwsRequest
from tests.iam_judge import allowed, simulating_session

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")
                 if "kind: sagemaker" in p.read_text())


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a dry run calls nothing
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))
    pipeline._target.cache_clear()
    yield
    pipeline._target.cache_clear()


_PLANS: dict[str, dict] = {}


def planned(name: str, capsys) -> dict:
    """The dry run's report of configs/<name>.yaml (once per config and session)."""
    if name not in _PLANS:
        assert main(["deploy", str(ROOT / "configs" / f"{name}.yaml"), "--dry-run",
                     "--json"]) == 0
        _PLANS[name] = json.loads(capsys.readouterr().out)
    return _PLANS[name]


def preflight(name: str, report: dict, policy: dict) -> list[str]:
    """The deploy's permission check (lifecycle.preflight's first question) of the planned
    requests, for a caller whose only policy is `policy`."""
    target = pipeline.target_for(load_spec(str(ROOT / "configs" / f"{name}.yaml")))
    target._session = simulating_session(policy)
    target.__dict__.pop("session", None)
    reqs = [AwsRequest(**r) for r in report["requests"]]
    return target.preflight(target.access_needs(reqs))


def test_there_are_sagemaker_configs_to_judge():
    assert len(CONFIGS) >= 8, CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_the_preflight_accepts_the_policy_lmiflow_writes(name, capsys):
    """A user who applied exactly `lmiflow iam CONFIG` passes the preflight: every planned
    request's action on its resources, with the context IAM's conditions read (PassRole's
    iam:PassedToService, an S3 listing's s3:prefix)."""
    report = planned(name, capsys)
    notes = preflight(name, report, report["iam_policy"])
    assert notes and notes[0].startswith("AWS identity: "), notes
    assert not any("not simulated" in n for n in notes)


@pytest.mark.parametrize("name", ["llama-3.1-8b-autoscaling", "shared-llama-3.1-8b"])
def test_the_preflight_refuses_the_policy_without_any_one_statement(name, capsys):
    report = planned(name, capsys)
    policy = report["iam_policy"]
    assert len(policy["Statement"]) >= 8
    for i, removed in enumerate(policy["Statement"]):
        rest = {**policy, "Statement": policy["Statement"][:i] + policy["Statement"][i + 1:]}
        with pytest.raises(AccessProblem) as err:
            preflight(name, report, rest)
        (line,) = str(err.value).splitlines()
        assert line.startswith("AWS permissions: ") and " may not call " in line
        assert any(a in line for a in removed["Action"]), (removed, line)


def _policy_and_requests(name: str, capsys) -> tuple[dict, list[dict]]:
    report = planned(name, capsys)
    return report["iam_policy"], report["requests"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_object_read_has_list_bucket_so_a_missing_key_is_a_404(name, capsys):
    """S3 API Reference, GetObject, Permissions: "If the object that you request doesn't
    exist, the error that Amazon S3 returns depends on whether you also have the
    s3:ListBucket permission. If you have the s3:ListBucket permission on the bucket, Amazon
    S3 returns an HTTP status code 404 Not Found error. If you don't have the s3:ListBucket
    permission, Amazon S3 returns an HTTP status code 403 Access Denied error."
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html). S3 checks
    s3:ListBucket there for the GetObject request, which names no s3:prefix: the grant must
    hold without one. lmiflow reads a missing baseline, calibration store or lease as "not
    there yet" only from a 404."""
    policy, reqs = _policy_and_requests(name, capsys)
    reads = {(r["params"]["Bucket"], r["params"]["Key"]) for r in reqs
             if r["service"] == "s3" and r["operation"] in ("GetObject", "HeadObject")}
    assert reads, "every SageMaker config reads something from S3"
    for bucket, key in sorted(reads):
        assert allowed(policy, "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}"), key
        assert allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}"), key
    # ... and listing stays within the folders lmiflow reads
    bucket = next(iter(reads))[0]
    assert not allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}",
                       {"s3:prefix": "someone-elses/"})


@pytest.mark.parametrize("name", ["shared-llama-3.1-8b", "shared-mistral-7b"])
def test_inference_component_runs_may_list_the_endpoints_components(name, capsys):
    """ListInferenceComponents (asked with EndpointNameEquals at promote and cleanup) takes
    no resource type in SageMaker's Service Authorization Reference: it is granted on "*"."""
    policy, reqs = _policy_and_requests(name, capsys)
    assert any(r["operation"] == "ListInferenceComponents" for r in reqs)
    assert allowed(policy, "sagemaker:ListInferenceComponents", "*")


def _arn(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:us-east-1:123456789012:{kind}/{name.lower()}"


@pytest.mark.parametrize("name", ["llama-3.1-8b-autoscaling", "shared-llama-3.1-8b",
                                  "shared-mistral-7b"])
def test_registering_a_scalable_target_may_act_on_the_target(name, capsys):
    """Application Auto Scaling User Guide, "Permissions required for API actions on target
    services and CloudWatch": to register a SageMaker scalable target the caller needs, on
    the target, sagemaker:DescribeEndpoint and sagemaker:UpdateEndpointWeightsAndCapacities
    (a variant), sagemaker:DescribeInferenceComponent and
    sagemaker:UpdateInferenceComponentRuntimeConfig (an inference component)
    (https://docs.aws.amazon.com/autoscaling/application/userguide/
    security_iam_id-based-policy-examples.html#application-auto-scaling-additional-permissions)."""
    policy, reqs = _policy_and_requests(name, capsys)
    targets = [r["params"]["ResourceId"] for r in reqs
               if r["operation"] == "RegisterScalableTarget"]
    assert targets
    for rid in targets:
        kind, _, rest = rid.partition("/")
        arn = _arn(kind, rest.split("/")[0])
        if kind == "endpoint":
            need = ("sagemaker:DescribeEndpoint", "sagemaker:UpdateEndpointWeightsAndCapacities")
        else:
            need = ("sagemaker:DescribeInferenceComponent",
                    "sagemaker:UpdateInferenceComponentRuntimeConfig")
        for action in need:
            assert allowed(policy, action, arn), (action, arn)


def test_resuming_a_staging_may_abort_the_uploads_an_interrupted_one_left(capsys):
    """Staged weights: stale multipart uploads under the prefix are aborted before the
    upload resumes; the abort is shown in the dry run and granted."""
    policy, reqs = _policy_and_requests("llama-3.1-8b-g5-g6", capsys)
    aborts = [r for r in reqs if r["operation"] == "AbortMultipartUpload"]
    assert [a["step"] for a in aborts] == ["stage_weights"]
    bucket, key = aborts[0]["params"]["Bucket"], aborts[0]["params"]["Key"]
    folder = key.rsplit("/", 1)[0]
    assert allowed(policy, "s3:AbortMultipartUpload", f"arn:aws:s3:::{bucket}/{folder}/x")
    assert allowed(policy, "s3:ListBucketMultipartUploads", f"arn:aws:s3:::{bucket}")


# ---- a maintained IAM database reads both policies --------------------------------------


def _arn_pattern(fmt: str):
    import re

    parts = re.split(r"\$\{[^}]+\}", fmt)
    return re.compile(".*".join(re.escape(p) for p in parts) + r"\Z")


def lint(policy: dict) -> list[str]:
    """What policy_sentry's copy of AWS's Service Authorization Reference finds wrong in a
    policy: an action IAM does not know, a resource of a type the action does not take, a
    condition key the action does not support (global aws:* keys aside)."""
    from policy_sentry.querying.actions import get_action_data

    problems = []
    for st in policy["Statement"]:
        keys = [k for conds in st.get("Condition", {}).values() for k in conds]
        for action in st["Action"]:
            service, name = action.split(":")
            rows = [r for r in get_action_data(service, name).get(service, [])
                    if r["action"].lower() == action.lower()]
            if not rows:
                problems.append(f"{action}: unknown action")
                continue
            formats = {r["resource_arn_format"] for r in rows}
            for resource in st["Resource"]:
                if resource == "*":
                    continue
                if not any(f != "*" and _arn_pattern(f).match(resource) for f in formats):
                    problems.append(f"{action}: takes no resource like {resource}")
            supported = {k for r in rows for k in r["condition_keys"]}
            problems += [f"{action}: no condition key {k}" for k in keys
                         if not k.startswith("aws:") and k not in supported]
    return problems


@pytest.mark.parametrize("name", CONFIGS)
def test_both_policies_pass_a_maintained_iam_linter(name, capsys):
    report = planned(name, capsys)
    assert lint(report["iam_policy"]) == []
    assert lint(report["execution_role_policy"]) == []


def test_the_linter_finds_what_it_is_there_to_find():
    bad = {"Statement": [
        {"Action": ["sagemaker:ListInferenceComponent"], "Resource": ["*"]},
        {"Action": ["sagemaker:CreateModel"],
         "Resource": ["arn:aws:sagemaker:us-east-1:123456789012:endpoint/x"]},
        {"Action": ["iam:PassRole"], "Resource": ["arn:aws:iam::123456789012:role/r"],
         "Condition": {"StringLike": {"s3:prefix": ["x/*"]}}}]}
    assert lint(bad) == [
        "sagemaker:ListInferenceComponent: unknown action",
        "sagemaker:CreateModel: takes no resource like "
        "arn:aws:sagemaker:us-east-1:123456789012:endpoint/x",
        "iam:PassRole: no condition key s3:prefix"]


@pytest.mark.parametrize("name", CONFIGS)
def test_the_runner_policy_fits_one_managed_policy(name, capsys):
    """IAM quotas: a managed policy holds at most 6,144 characters, white space not counted
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html)."""
    policy = planned(name, capsys)["iam_policy"]
    assert len("".join(json.dumps(policy).split())) <= 6144


# ---- `endpoints delete`: its own policy (`lmiflow iam`'s "delete"), not the runner's --------


def _delete_target(name: str, policy: dict | None = None):
    target = pipeline.target_for(load_spec(str(ROOT / "configs" / f"{name}.yaml")))
    if policy is not None:
        target._session = simulating_session(policy)
        target.__dict__.pop("session", None)
    return target


@pytest.mark.parametrize("name", CONFIGS)
def test_the_delete_policy_passes_the_linter_and_its_preflight(name):
    target = _delete_target(name)
    spec_name = load_spec(str(ROOT / "configs" / f"{name}.yaml")).name
    policy = target.delete_policy(spec_name)
    assert lint(policy) == []
    notes = _delete_target(name, policy).preflight(target.delete_needs(spec_name))
    assert not any("not simulated" in n for n in notes)


@pytest.mark.parametrize("name", ["llama-3.1-8b-g5-g6", "shared-llama-3.1-8b"])
def test_the_delete_preflight_refuses_the_policy_without_any_one_statement(name):
    spec_name = load_spec(str(ROOT / "configs" / f"{name}.yaml")).name
    policy = _delete_target(name).delete_policy(spec_name)
    needs = _delete_target(name).delete_needs(spec_name)
    for i, removed in enumerate(policy["Statement"]):
        if all(a.startswith(("application-autoscaling:", "cloudwatch:"))
               for a in removed["Action"]):
            continue  # delete goes on without autoscaling rights (remove_autoscaling)
        rest = {**policy, "Statement": policy["Statement"][:i] + policy["Statement"][i + 1:]}
        with pytest.raises(AccessProblem) as err:
            _delete_target(name, rest).preflight(needs)
        (line,) = str(err.value).splitlines()
        assert any(a in line for a in removed["Action"]), (removed, line)


def test_the_delete_policy_removes_only_what_lmiflow_staged_for_the_endpoint(capsys):
    name = "llama-3.1-8b-g5-g6"
    spec = load_spec(str(ROOT / "configs" / f"{name}.yaml"))
    policy = _delete_target(name).delete_policy(spec.name)
    bucket, _, prefix = spec.target.s3_uri.removeprefix("s3://").partition("/")
    objects = f"arn:aws:s3:::{bucket}/{prefix}"
    for key in (f"{spec.name}-m-0123abcd/serving.properties", f"{spec.name}/baseline.json",
                f"weights/meta-llama--x/{'a' * 40}/model.safetensors"):
        assert allowed(policy, "s3:DeleteObject", objects + key), key
    for key in (f"{spec.name}/reports/{spec.name}-c-0123abcd/report.json",
                "calibration.json", "other-m-0123abcd/serving.properties"):
        assert not allowed(policy, "s3:DeleteObject", objects + key), key
    assert allowed(policy, "sagemaker:DeleteEndpoint", _arn("endpoint", spec.name))
    assert not allowed(policy, "sagemaker:DeleteEndpoint", _arn("endpoint", "other"))
    # the runner's policy may not delete production: a deploy never does
    runner = planned(name, capsys)["iam_policy"]
    assert allowed(runner, "sagemaker:DeleteEndpoint", _arn("endpoint", spec.name + "-c-0123abcd"))
    assert not allowed(runner, "sagemaker:DeleteEndpoint", _arn("endpoint", spec.name))
