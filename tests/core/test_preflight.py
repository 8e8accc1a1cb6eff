"""Before anything is created: rollback alarms exist, the peak fleet fits the quota; and the
endpoint config carries the host the image needs. Against an in-memory target."""

from __future__ import annotations

import pytest

from lmiflow import lifecycle, pipeline
from lmiflow.errors import UserInputError
from lmiflow.pipeline import Candidate, Names
from lmiflow.report.model import HostSettings, PromotionPlan
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.weights import ModelSource, WeightsPlan
from tests.core.memory_target import MemoryTarget

NAMES = Names(production="prod", endpoint="prod-c-bbbbbbbb", endpoint_config="prod-ec-bbbbbbbb",
              model="prod-m-bbbbbbbb", spec_hash="bbbbbbbb")
PLAN = PromotionPlan(strategy="CANARY", instance_type="ml.p5.48xlarge", instance_count=2,
                     traffic_step="50 % of 2 = 1 instance(s)", alarms=["prod-5xx"],
                     peak_instances={"ml.p5.48xlarge": 4}, peak_assumption="assumed",
                     quota_names={"ml.p5.48xlarge": "ml.p5.48xlarge for endpoint usage"})


class Platform(MemoryTarget):
    """A target with alarms, quotas and a production fleet to describe."""

    def __init__(self, alarms=(), quotas=None, fleet=None):
        super().__init__()
        self.alarms, self.quotas, self.fleet = set(alarms), quotas or {}, fleet or {}
        self.asked: list[str] = []

    def missing_alarms(self, names):
        self.asked.append("alarms")
        return [n for n in names if n not in self.alarms]

    def endpoint_quotas(self, instance_types):
        self.asked.append("quotas")
        return {t: self.quotas.get(t) for t in instance_types}

    def production_fleet(self, name):
        self.asked.append("fleet")
        return dict(self.fleet)


WEIGHTS = WeightsPlan(source=ModelSource(kind="hub", id="org/model", access="public"),
                      delivery="hub")


def _candidate(plan=PLAN, host=None) -> Candidate:
    return Candidate(properties="x=1\n", image_uri="img", names=NAMES, weights=WEIGHTS,
                     host=host, promotion=plan)


def test_missing_alarm_stops_before_the_quota_is_even_asked():
    t = Platform(alarms=[])
    with pytest.raises(UserInputError) as err:
        lifecycle.preflight(t, _candidate())
    assert err.value.field == "promotion.alarms" and "prod-5xx" in err.value.reason
    assert t.asked == ["alarms"] and t.list_resources("prod") == {
        "models": [], "endpoint_configs": [], "endpoints": []}


def test_peak_over_quota_with_production_as_described():
    # production runs 2 x p5; the candidate (then green) 2 more: 4 at the peak, quota 3
    t = Platform(alarms=["prod-5xx"], quotas={"ml.p5.48xlarge": 3.0},
                 fleet={"ml.p5.48xlarge": 2})
    with pytest.raises(UserInputError) as err:
        lifecycle.preflight(t, _candidate())
    assert err.value.field == "instance.count"
    assert "4 x ml.p5.48xlarge" in err.value.reason and "is 3" in err.value.reason


def test_first_deploy_fits_where_a_redeploy_would_not():
    t = Platform(alarms=["prod-5xx"], quotas={"ml.p5.48xlarge": 3.0}, fleet={})
    plan = lifecycle.preflight(t, _candidate())
    assert plan is not None and plan.peak_instances == {"ml.p5.48xlarge": 2}
    assert "no production endpoint yet" in plan.peak_assumption


def test_unknown_quota_is_not_an_error():
    t = Platform(alarms=["prod-5xx"], quotas={}, fleet={"ml.g5.2xlarge": 1})
    plan = lifecycle.preflight(t, _candidate())
    assert plan.peak_instances == {"ml.g5.2xlarge": 1, "ml.p5.48xlarge": 2}


def test_configure_endpoint_carries_the_host():
    from lmiflow.sizing.planner import Plan

    class P:  # the two fields configure_endpoint reads of a plan
        chosen = type("O", (), {"instance_type": "ml.g5.2xlarge", "instance_count": 1})
        memory = type("M", (), {"weights_bytes": 16e9})

    seen = {}
    t = MemoryTarget()
    t.create_endpoint_config = (lambda name, model, variant, tags, component=None:
                                seen.update(v=variant))
    host = HostSettings(inference_ami_version="al2-ami-sagemaker-inference-gpu-3-1",
                        routing_strategy="RANDOM", why="pinned")
    lifecycle.configure_endpoint(t, _candidate(host=host), P, {})  # type: ignore[arg-type]
    assert seen["v"].inference_ami_version == "al2-ami-sagemaker-inference-gpu-3-1"
    assert seen["v"].routing_strategy == "RANDOM"
    lifecycle.configure_endpoint(t, _candidate(host=None), P, {})  # type: ignore[arg-type]
    assert seen["v"].inference_ami_version is None  # a target that runs no image
    assert Plan  # the real type the stand-in mirrors


def test_traffic_policy_carries_the_termination_wait():
    spec = DeploymentSpec.model_validate({
        "name": "prod", "model": {"id": "org/m"},
        "workload": {"max_input_tokens": 8, "max_output_tokens": 8, "concurrency": 1},
        "promotion": {"strategy": "LINEAR", "linear_step_pct": 50, "termination_wait_s": 900,
                      "alarms": ["a"]}})
    policy = pipeline.traffic_policy(spec)
    assert (policy.type, policy.linear_step_pct, policy.termination_wait_s) == ("LINEAR", 50, 900)


def test_autoscaling_max_above_the_quota_names_autoscaling_max():
    from lmiflow.sizing.autoscaling import scaling_plan

    def scaled(max_instances):
        return _candidate().model_copy(update={"autoscaling": scaling_plan(
            min_instances=2, max_instances=max_instances, target=1, headroom_pct=None,
            scale_in_cooldown_s=300, scale_out_cooldown_s=300, plan_max_per_copy=4,
            batch_per_copy=4, copies_per_instance=1, initial_instances=2)})

    # a first deploy peaks at 2 x p5 (within the quota of 3), but scaling may reach 4
    t = Platform(alarms=["prod-5xx"], quotas={"ml.p5.48xlarge": 3.0}, fleet={})
    with pytest.raises(UserInputError) as err:
        lifecycle.preflight(t, scaled(4))
    assert err.value.field == "autoscaling.max"
    assert "4 x ml.p5.48xlarge" in err.value.reason and "of 3" in err.value.reason
    assert lifecycle.preflight(t, scaled(3)) is not None


def test_preflight_asks_for_the_permissions_of_the_runs_planned_requests():
    """The permissions checked are those of the requests the run planned (a scaled run's
    RegisterScalableTarget among them), as the target reads them: the same list the IAM
    policy is written from."""
    from lmiflow.targets.aws_requests import AwsRequest

    class Asking(Platform):
        def preflight(self, needs=()):
            self.needs = list(needs)
            return []

        def access_needs(self, requests):
            return [(f"{r.service}:{r.operation}", "*") for r in requests]

    t = Asking(alarms=["prod-5xx"])
    lifecycle.preflight(t, _candidate())
    assert t.needs == []
    scaled = [AwsRequest(service="application-autoscaling", operation="RegisterScalableTarget",
                         params={})]
    lifecycle.preflight(t, _candidate(), scaled)
    assert t.needs == [("application-autoscaling:RegisterScalableTarget", "*")]


def test_a_shared_endpoint_that_cannot_take_the_component_stops_the_run_first():
    """Inference components: the endpoint's own limits are checked before its fleet and the
    quota are even asked, and the refusal is the target's one line, naming the field."""
    from tests.report.test_component_section import plan as component_plan

    class Shared(Platform):
        def check_shared_endpoint(self, production, component):
            self.asked.append(f"shared {production} {component.name}")
            raise UserInputError("inference_component.max_instances", "at most 1 instance")

    t = Shared(alarms=["prod-5xx"])
    cand = _candidate().model_copy(update={"names": NAMES.model_copy(update={
        "component": component_plan()})})
    with pytest.raises(UserInputError) as err:
        lifecycle.preflight(t, cand)
    assert err.value.field == "inference_component.max_instances"
    assert t.asked == ["alarms", "shared prod llama"]
