"""The dry run's request list is recorded from the deploy itself (lmiflow.recorded_run): a
request the lifecycle starts sending is listed without anything else changing, each branch's
requests say when they are sent, the preflight simulates exactly the listed requests'
permissions, and a lifecycle the in-memory account cannot follow fails loudly. The order of
a deploy (deploy_run) keeps the candidate's cleanup under the endpoint's lock."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmiflow import deploy_run
from lmiflow.cli import main
from lmiflow.recorded_run import FIRST, REDEPLOY, REJECTED, RecordingFailed, merge
from lmiflow.spec import load_spec
from lmiflow.targets.aws_requests import AwsRequest, request
from lmiflow.targets.sagemaker import SageMakerTarget
from tests.call_log import LoggedLock

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "llama-3.1-8b-g5-g6.yaml")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a dry run calls nothing
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))


def _requests(capsys, config: str = CONFIG) -> list[dict]:
    assert main(["deploy", config, "--dry-run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["requests"]


def _one(reqs, operation, step=None, **params) -> dict:
    found = [r for r in reqs if r["operation"] == operation
             and (step is None or r["step"] == step)
             and all(r["params"].get(k) == v for k, v in params.items())]
    assert len(found) == 1, (operation, params, found)
    return found[0]


def test_a_request_the_lifecycle_starts_sending_is_listed_where_it_is_sent(monkeypatch,
                                                                          capsys):
    real = SageMakerTarget.create_model

    def create_and_look(self, name, *args, **kw):
        real(self, name, *args, **kw)
        self.send(request("sagemaker", "DescribeModel", ModelName=name))

    monkeypatch.setattr(SageMakerTarget, "create_model", create_and_look)
    reqs = _requests(capsys)
    created = _one(reqs, "CreateModel")
    after = reqs[reqs.index(created) + 1]
    assert (after["step"], after["operation"], after["params"]) == (
        "create_model", "DescribeModel", {"ModelName": created["params"]["ModelName"]})


def test_each_branch_says_when_its_requests_are_sent(capsys):
    reqs = _requests(capsys)
    prod = "llama-3-1-8b-prod"
    assert _one(reqs, "CreateEndpoint", "promote", EndpointName=prod)["when"] == (
        "only in a first deploy")
    assert _one(reqs, "UpdateEndpoint", "promote")["when"] == (
        "when production exists and the candidate is promoted")
    cleanup = [r for r in reqs if r["step"] == "cleanup"]
    assert {r["operation"] for r in cleanup} >= {"DeleteEndpoint", "DeleteEndpointConfig",
                                                  "DeleteModel"}
    assert {r["when"] for r in cleanup} == {"only in a rejected redeploy"}
    # an interrupted run's candidate, removed before this one's model is created
    gone = _one(reqs, "DeleteModel", "create_model", ModelName=f"{prod}-m-xxxxxxxx")
    assert gone["when"] == "only when an interrupted run left its candidate behind"
    lease = [r for r in reqs if r["step"] == "lock"]
    assert [r["operation"] for r in lease] == ["PutObject", "GetObject", "PutObject"]
    assert lease[1]["when"].startswith("only when an interrupted run left its lease")
    probe = _one(reqs, "ListEndpoints", "preflight", MaxResults=1)
    assert "may not simulate" in probe["when"]
    bench = _one(reqs, "InvokeEndpointWithResponseStream", "benchmark")
    assert bench["when"].startswith("x ") and "benchmark" in bench["when"]


def test_the_preflight_simulates_exactly_the_listed_requests_permissions(capsys):
    reqs = _requests(capsys)
    shown = [AwsRequest(**{k: v for k, v in r.items() if v is not None}) for r in reqs]
    target = SageMakerTarget(region="us-east-1",
                             role_arn=load_spec(CONFIG).target.role_arn)
    needs = {(a, r.format(partition="aws", region="us-east-1", account="123456789012"),
              tuple(ctx[0]) if ctx else ())
             for a, r, *ctx in target.access_needs([q for q in shown if q.service != "iam"])}
    simulated = set()
    for q in shown:
        if q.operation != "SimulatePrincipalPolicy":
            continue
        ctx = tuple((e["ContextKeyName"], e["ContextKeyValues"][0])
                    for e in q.params.get("ContextEntries", []))
        simulated |= {(a, r, ctx) for a in q.params["ActionNames"]
                      for r in q.params["ResourceArns"]}
    assert simulated and simulated == needs


def test_a_lifecycle_the_account_cannot_follow_fails_loudly(monkeypatch):
    real = SageMakerTarget.create_model

    def create_and_ask_something_new(self, name, *args, **kw):
        real(self, name, *args, **kw)
        self.send(request("sagemaker", "ListClusters"))

    monkeypatch.setattr(SageMakerTarget, "create_model", create_and_ask_something_new)
    with pytest.raises(RecordingFailed, match=r"ListClusters.*does not answer"):
        main(["deploy", CONFIG, "--dry-run", "--json"])


def _req(op: str, step: str = "s", **params) -> AwsRequest:
    return AwsRequest(service="sagemaker", operation=op, params=params, step=step)


def test_merge_lays_branches_over_the_redeploy_and_counts_repeats():
    redeploy = [_req("DescribeEndpoint", EndpointName="p"), _req("DescribeEndpoint",
                                                                 EndpointName="p"),
                _req("UpdateEndpoint", EndpointName="p", EndpointConfigName="c")]
    first = [_req("DescribeEndpoint", EndpointName="p"),
             _req("CreateEndpoint", EndpointName="p", EndpointConfigName="c")]
    rejected = [_req("DescribeEndpoint", EndpointName="p"), _req("DeleteModel", ModelName="m")]
    out = merge([(FIRST, first), (REDEPLOY, redeploy), (REJECTED, rejected)], 5)
    assert [(r.operation, r.when) for r in out] == [
        ("DescribeEndpoint", "x 2 in a recorded run (polls repeat until the status settles)"),
        ("UpdateEndpoint", "when production exists and the candidate is promoted"),
        ("CreateEndpoint", "only in a first deploy"),
        ("DeleteModel", "only in a rejected redeploy"),
    ]


class _Impl:
    """Steps that only say what happened, in order; the gate rejects."""

    def __init__(self):
        self.calls: list[str] = []
        self.endpoint_lock = lambda spec, run_id: LoggedLock(self.calls)

    def __getattr__(self, name):
        def step(*args, **kw):
            self.calls.append(name)
            if name == "gate":
                return SimpleNamespace(passed=False, checks=[])
            if name == "benchmark":
                return SimpleNamespace(levels=[], production=None)
            if name == "create_endpoint":
                return SimpleNamespace(seconds=1.0)
            if name in ("preflight", "stage_weights", "load_baseline", "production_state"):
                return None
            return SimpleNamespace(removed_leftovers=[], output="ok")
        return step


def test_a_rejected_candidate_is_removed_before_the_lock_is_released(monkeypatch):
    import logging

    from lmiflow.run_record import RunRecord

    spec = load_spec(str(ROOT / "configs" / "local-demo.yaml"))
    names = SimpleNamespace(model="m", endpoint="e", endpoint_config="c", production="p")
    weights = SimpleNamespace(delivery="hub")
    candidate = SimpleNamespace(names=names, weights=weights, image_uri=None, autoscaling=None)
    monkeypatch.setattr(deploy_run.pipeline, "tags_for", lambda *a: {})
    monkeypatch.setattr(deploy_run.pipeline, "target_for", lambda spec: None)
    monkeypatch.setattr(deploy_run, "_record_calibration", lambda *a: None)
    monkeypatch.setattr(RunRecord, "finish", lambda self, status, production=None: None)
    impl = _Impl()
    model = SimpleNamespace(local_dir=None)
    status, _ = deploy_run.deploy(spec, RunRecord(spec, None), impl,
                                  lambda: (model, None, candidate), logging.getLogger("t"))
    assert status == "rejected"
    assert impl.calls.index("cleanup_candidate") < impl.calls.index("release")
    assert impl.calls[-2:] == ["production_state", "report"]
