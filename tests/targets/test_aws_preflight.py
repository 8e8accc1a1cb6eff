"""The SageMaker preflight: region, identity, permissions, each failing with one line and exit
2 before anything is created. STS, IAM and SageMaker answers come from botocore's Stubber
(each request checked against the service model) or moto; the CLI runs with no credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from lmiflow.targets.aws_preflight import (
    AccessProblem,
    check_access,
    check_region,
    principal_arn,
)

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/runner"
CALLER = f"arn:aws:sts::{ACCOUNT}:assumed-role/runner/ci-session"


class StubbedSession:
    """A boto3 session whose clients are the stubbed ones below (one per service)."""

    def __init__(self, credentials: bool = True):
        real = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                             region_name="us-east-1")
        self._real = real
        self._credentials = credentials
        self.clients = {name: real.client(name) for name in ("sts", "iam", "sagemaker")}
        self.stubs = {name: Stubber(c) for name, c in self.clients.items()}

    def get_credentials(self):
        return self._real.get_credentials() if self._credentials else None

    def client(self, name, region_name=None, config=None):
        return self.clients[name]

    def get_available_partitions(self):
        return self._real.get_available_partitions()

    def get_available_regions(self, service, partition="aws"):
        return self._real.get_available_regions(service, partition)

    def __enter__(self):
        for s in self.stubs.values():
            s.activate()
        return self

    def __exit__(self, *exc):
        for s in self.stubs.values():
            s.assert_no_pending_responses()
            s.deactivate()


def identity(stub: Stubber, arn: str = CALLER) -> None:
    stub.add_response("get_caller_identity",
                      {"UserId": "AROAEXAMPLE:ci-session", "Account": ACCOUNT, "Arn": arn}, {})


def decision(action: str, resource: str, verdict: str) -> dict:
    return {"EvalActionName": action, "EvalResourceName": resource, "EvalDecision": verdict}


def test_region_checked_against_botocore_endpoint_data():
    regions = boto3.Session().get_available_regions("sagemaker")
    assert check_region("eu-west-1", regions) is None
    assert "not a region" in check_region("mars-1", regions)
    assert "AWS_REGION" in check_region(None, regions)


def test_principal_of_an_assumed_role_is_its_role():
    assert principal_arn(CALLER) == ROLE
    assert principal_arn(f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/r/s") == \
        f"arn:aws-cn:iam::{ACCOUNT}:role/r"
    user = f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert principal_arn(user) == user
    assert principal_arn(f"arn:aws:iam::{ACCOUNT}:root") is None


def test_allowed_actions_simulated_per_resource_with_the_account_filled_in():
    endpoint = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/prod"
    with StubbedSession() as s:
        identity(s.stubs["sts"])
        s.stubs["iam"].add_response(
            "simulate_principal_policy",
            {"EvaluationResults": [decision("sagemaker:DescribeEndpoint", endpoint, "allowed"),
                                   decision("sagemaker:DeleteEndpoint", endpoint, "allowed")]},
            {"PolicySourceArn": ROLE, "ResourceArns": [endpoint],
             "ActionNames": ["sagemaker:DescribeEndpoint", "sagemaker:DeleteEndpoint"]})
        s.stubs["iam"].add_response(
            "simulate_principal_policy",
            {"EvaluationResults": [decision("iam:PassRole", ROLE, "allowed")]},
            {"PolicySourceArn": ROLE, "ResourceArns": [ROLE], "ActionNames": ["iam:PassRole"]})
        arn = "arn:{partition}:sagemaker:{region}:{account}:endpoint/prod"
        access = check_access(s, "us-east-1", [("sagemaker:DescribeEndpoint", arn),
                                               ("sagemaker:DeleteEndpoint", arn),
                                               ("iam:PassRole", ROLE)])
    assert access.account == ACCOUNT and access.arn == CALLER and access.notes == []


def test_denied_action_is_one_line_naming_action_and_resource():
    with StubbedSession() as s:
        identity(s.stubs["sts"])
        s.stubs["iam"].add_response(
            "simulate_principal_policy",
            {"EvaluationResults": [decision("iam:PassRole", ROLE, "implicitDeny")]},
            {"PolicySourceArn": ROLE, "ResourceArns": [ROLE], "ActionNames": ["iam:PassRole"]})
        with pytest.raises(AccessProblem) as err:
            check_access(s, "us-east-1", [("iam:PassRole", ROLE)])
    text = str(err.value)
    assert text.splitlines() == [f"AWS permissions: {CALLER} may not call iam:PassRole on {ROLE}"]


@pytest.mark.parametrize("code", ["ExpiredToken", "InvalidClientTokenId"])
def test_rejected_credentials(code):
    with StubbedSession() as s:
        s.stubs["sts"].add_client_error("get_caller_identity", code, "The token is bad")
        with pytest.raises(AccessProblem) as err:
            check_access(s, "us-east-1", [("sagemaker:ListEndpoints", "*")])
    assert err.value.field == "AWS identity" and code in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_no_credentials_makes_no_call():
    # No response queued: any call would fail the stubber.
    with StubbedSession(credentials=False) as s, pytest.raises(AccessProblem) as err:
        check_access(s, "us-east-1")
    assert "no credentials found" in str(err.value)


def test_without_simulate_permission_a_read_only_probe_decides():
    with StubbedSession() as s:
        identity(s.stubs["sts"])
        s.stubs["iam"].add_client_error("simulate_principal_policy", "AccessDenied", "no")
        s.stubs["sagemaker"].add_response("list_endpoints", {"Endpoints": []},
                                          {"MaxResults": 1})
        access = check_access(s, "us-east-1", [("sagemaker:CreateModel", "*")])
        assert "not simulated (AccessDenied)" in access.notes[0]

    with StubbedSession() as s:
        identity(s.stubs["sts"])
        s.stubs["iam"].add_client_error("simulate_principal_policy", "AccessDenied", "no")
        s.stubs["sagemaker"].add_client_error("list_endpoints", "AccessDeniedException", "no")
        with pytest.raises(AccessProblem) as err:
            check_access(s, "us-east-1", [("sagemaker:CreateModel", "*")])
    assert str(err.value) == (f"AWS permissions: {CALLER} may not call "
                              "sagemaker:ListEndpoints (AccessDeniedException)")


def test_target_preflight_under_moto():
    from moto import mock_aws

    from lmiflow.targets.sagemaker import SageMakerTarget

    with mock_aws():
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                region_name="us-west-2")
        notes = SageMakerTarget("us-west-2", session=session).preflight()
    assert notes[0].startswith("AWS identity: arn:aws:sts::123456789012:")
    assert "us-west-2" in notes[0]


def lmiflow(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    clean.update({"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE":
                  "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true", **env})
    return subprocess.run([sys.executable, "-m", "lmiflow", *args], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("action", [["list"], ["invoke", "prod", "hi"], ["delete", "prod"]])
def test_endpoints_commands_without_credentials_say_so_in_one_line(action):
    r = lmiflow("endpoints", action[0], "--target", "sagemaker", "--region", "us-east-1",
                *action[1:])
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "lmiflow: error: AWS identity: no credentials found (environment, AWS_PROFILE, "
        "~/.aws, target.aws_credentials_block or an instance role)"]


def test_unknown_profile_and_unknown_region_are_one_line_each():
    r = lmiflow("endpoints", "list", "--target", "sagemaker", "--region", "us-east-1",
                AWS_PROFILE="nope")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "nope" in r.stderr
    r = lmiflow("endpoints", "list", "--target", "sagemaker", "--region", "mars-1",
                AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY="x")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "lmiflow: error: target.region: 'mars-1' is not a region where SageMaker is offered"]


def test_deploy_without_credentials_stops_before_the_flow_with_one_line(tmp_path):
    """The first question of the preflight: no 61-line traceback at create_model, no
    'CLEANUP FAILED', nothing created (no flow, no state)."""
    r = lmiflow("deploy", str(ROOT / "configs" / "llama-3.1-8b-g5-g6.yaml"),
                "--report-dir", str(tmp_path / "report"), HF_HUB_OFFLINE="1",
                LMIFLOW_STATE_DIR=str(tmp_path / "state"), PREFECT_HOME=str(tmp_path / "home"))
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("lmiflow: error:")]
    assert errors == ["lmiflow: error: AWS identity: no credentials found (environment, "
                      "AWS_PROFILE, ~/.aws, target.aws_credentials_block or an instance role)"]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "report").exists() and not (tmp_path / "home").exists()
