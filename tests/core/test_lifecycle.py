"""Promotion, cleanup, leftover removal and teardown, without Prefect or an API server: what
each deletes, and above all what it must never delete (whatever production serves)."""

from __future__ import annotations

import pytest

from lmiflow import lifecycle
from lmiflow.bench.metrics import BenchResult, LevelResult
from lmiflow.errors import StepFailed
from lmiflow.pipeline import Candidate, Names
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.base import EndpointStatus
from lmiflow.targets.weights import ModelSource, WeightsPlan
from tests.core.memory_target import MemoryTarget

SPEC = DeploymentSpec.model_validate({
    "name": "prod",
    "model": {"id": "org/model"},
    "workload": {"max_input_tokens": 64, "max_output_tokens": 8, "concurrency": 1},
    "smoke_test": {"prompt": "Hi", "max_new_tokens": 2},
    "promotion": {"strategy": "CANARY", "canary_size_pct": 25, "endpoint_timeout_s": 5},
})
OLD = Names(production="prod", endpoint="prod-c-aaaaaaaa", endpoint_config="prod-ec-aaaaaaaa",
            model="prod-m-aaaaaaaa", spec_hash="aaaaaaaa")
NEW = Names(production="prod", endpoint="prod-c-bbbbbbbb", endpoint_config="prod-ec-bbbbbbbb",
            model="prod-m-bbbbbbbb", spec_hash="bbbbbbbb")


def with_candidate(production_on: Names | None = OLD) -> MemoryTarget:
    """Production serving `production_on` (None: no production yet) and NEW's candidate up."""
    t = MemoryTarget()
    if production_on is not None:
        t.deployed("prod", production_on.endpoint_config, production_on.model)
    t.deployed(NEW.endpoint, NEW.endpoint_config, NEW.model)
    return t


# ---- cleanup ------------------------------------------------------------------------------------

def test_cleanup_removes_the_candidate_and_leaves_production():
    t = with_candidate()
    removed = lifecycle.cleanup_candidate(t, NEW)
    assert removed == ["endpoint prod-c-bbbbbbbb", "endpoint config prod-ec-bbbbbbbb",
                       "model prod-m-bbbbbbbb"]
    assert t.list_resources("prod") == {"models": ["prod-m-aaaaaaaa"],
                                        "endpoint_configs": ["prod-ec-aaaaaaaa"],
                                        "endpoints": ["prod"]}


def test_cleanup_never_deletes_the_config_and_model_production_serves():
    # A promotion that switched production to the candidate's config, then failed (say, its
    # production smoke test): the run ends failed, but production must keep serving.
    t = with_candidate(production_on=NEW)
    removed = lifecycle.cleanup_candidate(t, NEW)
    assert removed == ["endpoint prod-c-bbbbbbbb"]
    assert t.configs == {"prod-ec-bbbbbbbb": "prod-m-bbbbbbbb"}
    assert "prod-m-bbbbbbbb" in t.models
    assert t.describe("prod").config_name == "prod-ec-bbbbbbbb"


def test_cleanup_of_what_never_existed_lists_nothing():
    assert lifecycle.cleanup_candidate(MemoryTarget(), NEW) == []


def test_leftovers_are_this_endpoints_candidates_that_production_does_not_use():
    t = with_candidate()
    t.deployed("prod-c-cccccccc", "prod-ec-cccccccc", "prod-m-cccccccc")  # interrupted run
    t.deployed("prod-2", "prod-2-ec-dddddddd", "prod-2-m-dddddddd")  # another endpoint
    t.models["prod-notes"] = "mem://x/"  # not a candidate name
    removed = lifecycle.remove_leftovers(t, "prod")
    assert sorted(removed) == sorted(
        f"{kind} prod-{tag}-{h}" for h in ("bbbbbbbb", "cccccccc")
        for kind, tag in (("endpoint", "c"), ("endpoint_config", "ec"), ("model", "m")))
    assert t.list_resources("prod") == {
        "models": ["prod-2-m-dddddddd", "prod-m-aaaaaaaa", "prod-notes"],
        "endpoint_configs": ["prod-2-ec-dddddddd", "prod-ec-aaaaaaaa"],
        "endpoints": ["prod", "prod-2"]}


# ---- promotion ----------------------------------------------------------------------------------

def test_first_promotion_creates_production_on_the_candidates_config():
    t = with_candidate(production_on=None)
    result = lifecycle.promote(t, SPEC, NEW, {})
    assert result.action == "created" and result.previous_config is None
    assert t.describe("prod").config_name == "prod-ec-bbbbbbbb"
    assert result.removed == ["endpoint prod-c-bbbbbbbb"]  # config and model now production's
    assert result.production_smoke_test.passed and result.production_smoke_test.endpoint == "prod"
    assert t.updates == []


def test_promotion_updates_blue_green_and_removes_what_production_ran_before():
    t = with_candidate()
    seen = []
    result = lifecycle.promote(t, SPEC, NEW, {}, on_status=lambda st, s: seen.append(st.status))
    assert result.action == "updated (CANARY)" and result.previous_config == "prod-ec-aaaaaaaa"
    ((name, config, policy),) = t.updates
    assert (name, config, policy.type, policy.canary_size_pct) == (
        "prod", "prod-ec-bbbbbbbb", "CANARY", 25)
    assert sorted(result.removed) == ["endpoint prod-c-bbbbbbbb",
                                      "endpoint_config prod-ec-aaaaaaaa", "model prod-m-aaaaaaaa"]
    assert t.list_resources("prod") == {"models": ["prod-m-bbbbbbbb"],
                                        "endpoint_configs": ["prod-ec-bbbbbbbb"],
                                        "endpoints": ["prod"]}
    assert seen == ["InService"]


def test_rolled_back_update_fails_and_deletes_nothing_of_production():
    t = with_candidate()
    t.roll_back = True
    before = t.list_resources("prod")
    with pytest.raises(StepFailed, match="still serves prod-ec-aaaaaaaa"):
        lifecycle.promote(t, SPEC, NEW, {})
    # only the candidate endpoint is gone (its benchmark was done before the update started)
    before["endpoints"].remove("prod-c-bbbbbbbb")
    assert t.list_resources("prod") == before
    assert t.describe("prod").config_name == "prod-ec-aaaaaaaa"


def test_the_candidate_endpoint_is_gone_before_production_changes():
    # at most two fleets: blue (production) and green (the candidate's config), never three
    t = with_candidate()
    fleets_at_update = []
    update = t.update_endpoint

    def counting_update(name, config_name, policy=None, **kw):
        fleets_at_update.append(sorted(t.endpoints))
        update(name, config_name, policy, **kw)

    t.update_endpoint = counting_update
    lifecycle.promote(t, SPEC, NEW, {})
    assert fleets_at_update == [["prod"]]  # blue only; SageMaker adds green
    first = with_candidate(production_on=None)
    create = first.create_endpoint
    seen = []
    first.create_endpoint = lambda n, c, tags: (seen.append(sorted(first.endpoints)),
                                                create(n, c, tags))
    lifecycle.promote(first, SPEC, NEW, {})
    assert seen == [[]]  # a first deploy: production is created after the candidate is gone


def test_production_that_fails_its_smoke_test_is_not_a_promotion():
    t = with_candidate()
    t.answer = {"generated_text": "", "details": {"generated_tokens": 0}}
    with pytest.raises(StepFailed, match="smoke test of prod failed: no tokens generated"):
        lifecycle.promote(t, SPEC, NEW, {})
    assert "prod-ec-aaaaaaaa" in t.configs  # nothing removed before production proved itself


def test_a_retried_promotion_finishes_the_cleanup():
    t = with_candidate(production_on=NEW)  # the first try switched production, then died
    t.deployed(OLD.endpoint, OLD.endpoint_config, OLD.model)
    result = lifecycle.promote(t, SPEC, NEW, {})
    assert result.action == "already serving this config" and t.updates == []
    assert t.list_resources("prod") == {"models": ["prod-m-bbbbbbbb"],
                                        "endpoint_configs": ["prod-ec-bbbbbbbb"],
                                        "endpoints": ["prod"]}


# ---- the candidate, teardown, baseline ----------------------------------------------------------

def test_create_model_removes_leftovers_then_creates_from_the_package():
    t = MemoryTarget()
    t.deployed("prod-c-cccccccc", "prod-ec-cccccccc", "prod-m-cccccccc")
    weights = WeightsPlan(source=ModelSource(kind="hub", id="org/model", access="public"),
                          delivery="hub")
    created = lifecycle.create_model(t, SPEC, Candidate(properties="option.x=1\n",
                                                        image_uri=None, names=NEW,
                                                        weights=weights), {})
    assert created.model_data == "mem://prod-m-bbbbbbbb/"
    assert len(created.removed_leftovers) == 3
    assert t.models == {"prod-m-bbbbbbbb": "mem://prod-m-bbbbbbbb/"}


def test_teardown_removes_production_its_config_and_model_and_candidates():
    t = with_candidate()
    t.deployed("other", "other-ec-aaaaaaaa", "other-m-aaaaaaaa")
    removed = lifecycle.teardown(t, "prod")
    assert removed[0] == "endpoint prod"
    assert t.list_resources("prod") == {"models": [], "endpoint_configs": [], "endpoints": []}
    assert t.list_resources("other")["endpoints"] == ["other"]
    assert lifecycle.teardown(t, "prod") == []


def test_baseline_round_trips_as_a_bench_result():
    t = MemoryTarget()
    assert lifecycle.load_baseline(t, "prod") is None
    bench = BenchResult(levels=[LevelResult(concurrency=4, requests=8, output_tokens_per_s=12.5)])
    assert lifecycle.save_baseline(t, "prod", bench) == "mem://prod/baseline.json"
    assert lifecycle.load_baseline(t, "prod") == bench


def test_wait_turns_failed_into_step_failed_with_the_reason():
    t = MemoryTarget()
    t.endpoints["e"] = EndpointStatus(name="e", status="Failed", failure_reason="out of memory")
    with pytest.raises(StepFailed, match="e is Failed: out of memory"):
        lifecycle.wait_in_service(t, "e", 5)


def test_an_update_in_progress_owns_its_new_config():
    # Interrupted mid-promotion: production is Updating to NEW's config. The interrupted run's
    # cleanup removes the candidate endpoint but not what production is switching to.
    t = with_candidate()
    t.endpoints["prod"] = t.endpoints["prod"].model_copy(
        update={"status": "Updating", "pending_config_name": NEW.endpoint_config})
    assert lifecycle.cleanup_candidate(t, NEW) == ["endpoint prod-c-bbbbbbbb"]
    assert lifecycle.remove_leftovers(t, "prod") == []
    assert set(t.configs) == {OLD.endpoint_config, NEW.endpoint_config}


def test_promotion_waits_for_an_update_already_in_flight():
    # A rerun after a promotion that was interrupted mid-update: production is still Updating
    # to this very config. Promotion waits for it to settle instead of failing as busy.
    t = with_candidate()
    t.endpoints["prod"] = t.endpoints["prod"].model_copy(
        update={"status": "Updating", "pending_config_name": NEW.endpoint_config})

    def settle(name, timeout_s, on_status=None):
        t.endpoints[name] = t.endpoints[name].model_copy(update={
            "status": "InService", "config_name": NEW.endpoint_config,
            "pending_config_name": None})
        return t.describe(name)

    t.wait = settle
    result = lifecycle.promote(t, SPEC, NEW, {})
    assert result.action == "already serving this config" and t.updates == []


class Scaling(MemoryTarget):
    """Records what the autoscaling calls asked of the target."""

    def __init__(self):
        super().__init__()
        self.scaled: dict[str, object] = {}

    def apply_autoscaling(self, endpoint, plan):
        self.scaled[endpoint] = plan
        return [f"scaled {endpoint}"]

    def remove_autoscaling(self, endpoint):
        return self.scaled.pop(endpoint, None) is not None


def test_autoscale_applies_the_plan_and_teardown_removes_it_first():
    from lmiflow.sizing.autoscaling import scaling_plan

    plan = scaling_plan(min_instances=1, max_instances=2, target="auto", headroom_pct=None,
                        scale_in_cooldown_s=60, scale_out_cooldown_s=0, plan_max_per_copy=4,
                        batch_per_copy=4, copies_per_instance=1, initial_instances=1)
    t = Scaling()
    assert lifecycle.autoscale(t, "prod", None) == [] and t.scaled == {}  # not asked: nothing
    assert lifecycle.autoscale(t, "prod", plan) == ["scaled prod"]
    assert t.scaled == {"prod": plan}
    assert lifecycle.teardown(t, "prod")[0] == "autoscaling of prod"
    assert t.scaled == {}
