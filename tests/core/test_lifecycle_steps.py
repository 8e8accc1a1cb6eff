"""The candidate's steps one by one, against an in-memory target that records every call: the
names, tags and settings each step hands the platform, the timings it reports, and the
messages it fails with."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lmiflow import lifecycle, pipeline
from lmiflow.bench.metrics import BenchResult
from lmiflow.errors import StepFailed
from lmiflow.pipeline import Candidate
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.base import EndpointStatus, ModelPackage, WaitTimeout
from lmiflow.targets.weights import ModelSource, WeightsPlan
from tests.core.memory_target import MemoryTarget
from tests.core.test_lifecycle import NEW, OLD, SPEC, with_candidate
from tests.report.test_component_section import plan as component_plan

TAGS = {"project": "lmiflow", "lmiflow:run-id": "r1"}
WEIGHTS = WeightsPlan(source=ModelSource(kind="hub", id="org/model", access="public"),
                      delivery="hub")


class Recorder(MemoryTarget):
    """MemoryTarget that keeps the arguments of every call."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls: list[tuple] = []
        self.status = "InService"
        self.failure_reason: str | None = None
        self.wait_error: Exception | None = None

    def package(self, name, properties, weights=None):
        self.calls.append(("package", name, properties))
        return ModelPackage(model_data=f"mem://{name}/", env={"OPTION_X": "1"})

    def create_model(self, name, model_data, image_uri, env, tags, *, network_isolation=False):
        self.calls.append(("create_model", name, model_data, image_uri, env, tags))
        super().create_model(name, model_data, image_uri, env, tags,
                             network_isolation=network_isolation)

    def endpoint_variant(self, instance_type, instance_count, weights_bytes):
        self.calls.append(("endpoint_variant", instance_type, instance_count, weights_bytes))
        return super().endpoint_variant(instance_type, instance_count, weights_bytes)

    def create_endpoint_config(self, name, model_name, variant, tags, component=None):
        self.calls.append(("create_endpoint_config", name, model_name, variant, tags))
        super().create_endpoint_config(name, model_name, variant, tags)

    def create_endpoint(self, name, config_name, tags):
        self.calls.append(("create_endpoint", name, config_name, tags))
        super().create_endpoint(name, config_name, tags)

    def wait(self, name, timeout_s, on_status=None):
        self.calls.append(("wait", name, timeout_s, on_status))
        if self.wait_error:
            raise self.wait_error
        return EndpointStatus(name=name, status=self.status, failure_reason=self.failure_reason,
                              config_name=self.endpoints[name].config_name,
                              url=f"http://127.0.0.1:9/{name}/invocations")

    def invoke(self, name, payload, timeout_s=None):
        self.calls.append(("invoke", name, payload))
        return super().invoke(name, payload)


@pytest.fixture
def clock(monkeypatch):
    """lifecycle's monotonic clock: 100 s, then 102.5 s."""
    ticks = iter([100.0, 102.5])
    monkeypatch.setattr(lifecycle.time, "monotonic", lambda: next(ticks))


def test_create_model_hands_the_package_image_and_tags_to_the_target(caplog):
    t = Recorder()
    candidate = Candidate(properties="option.x=1\n", image_uri="img:1", names=NEW,
                          weights=WEIGHTS)
    created = lifecycle.create_model(t, SPEC, candidate, TAGS)
    assert t.calls == [
        ("package", NEW.model, "option.x=1\n"),
        ("create_model", NEW.model, f"mem://{NEW.model}/", "img:1", {"OPTION_X": "1"}, TAGS)]
    assert created == lifecycle.CreatedModel(model=NEW.model, model_data=f"mem://{NEW.model}/")
    assert caplog.messages == []


def test_create_model_says_which_leftovers_it_removed(caplog):
    t = Recorder()
    t.deployed(OLD.endpoint, OLD.endpoint_config, OLD.model)
    with caplog.at_level("WARNING", logger="lmiflow.lifecycle"):
        lifecycle.create_model(t, SPEC, Candidate(properties="", image_uri=None, names=NEW,
                                                  weights=WEIGHTS), {})
    assert caplog.messages == [
        f"removed leftovers of an earlier run: endpoint {OLD.endpoint}, endpoint_config "
        f"{OLD.endpoint_config}, model {OLD.model}"]


def test_configure_endpoint_sizes_the_variant_from_the_plan():
    t = Recorder()
    plan = SimpleNamespace(chosen=SimpleNamespace(instance_type="ml.g5.12xlarge",
                                                  instance_count=2),
                           memory=SimpleNamespace(weights_bytes=26.0e9))
    candidate = Candidate(properties="", image_uri=None, names=NEW, weights=WEIGHTS)
    variant = lifecycle.configure_endpoint(t, candidate, plan, TAGS)
    assert (variant.instance_type, variant.instance_count) == ("ml.g5.12xlarge", 2)
    assert t.calls == [
        ("endpoint_variant", "ml.g5.12xlarge", 2, 26_000_000_000),
        ("create_endpoint_config", NEW.endpoint_config, NEW.model, variant, TAGS)]


def test_create_endpoint_waits_for_it_and_reports_how_long(clock):
    t = Recorder()

    def on_status(st, elapsed):
        return None

    created = lifecycle.create_endpoint(t, NEW, TAGS, 900, on_status)
    assert t.calls == [("create_endpoint", NEW.endpoint, NEW.endpoint_config, TAGS),
                       ("wait", NEW.endpoint, 900, on_status)]
    assert created == lifecycle.CreatedEndpoint(
        endpoint=NEW.endpoint, status="InService", seconds=2.5,
        url=f"http://127.0.0.1:9/{NEW.endpoint}/invocations")


def test_wait_failures_name_the_endpoint_and_why():
    t = Recorder()
    t.deployed("e", "e-ec", "e-m")
    t.status = "Failed"
    with pytest.raises(StepFailed) as err:
        lifecycle.wait_in_service(t, "e", 5)
    assert str(err.value) == "e is Failed: no reason given"
    t.wait_error = WaitTimeout("still Creating")
    with pytest.raises(StepFailed) as err:
        lifecycle.wait_in_service(t, "e", 299.6)
    assert str(err.value) == ("e not InService within 300 s (promotion.endpoint_timeout_s): "
                              "still Creating")


def test_smoke_test_sends_the_configured_prompt_and_times_it(clock):
    t = Recorder(answer={"generated_text": " there", "details": {"generated_tokens": 2}})
    t.deployed(NEW.endpoint, NEW.endpoint_config, NEW.model)
    result = lifecycle.smoke_test(t, SPEC, NEW.endpoint)
    assert t.calls[-1] == ("invoke", NEW.endpoint, pipeline.smoke_payload(SPEC))
    assert result.model_dump() == {"passed": True, "output": " there",
                                   "endpoint": NEW.endpoint, "seconds": 2.5, "error": None}


def test_first_promotion_tags_production():
    t = Recorder()
    t.deployed(NEW.endpoint, NEW.endpoint_config, NEW.model)
    lifecycle.promote(t, SPEC, NEW, TAGS)
    assert ("create_endpoint", "prod", NEW.endpoint_config, TAGS) in t.calls


def test_rolled_back_update_says_so():
    t = with_candidate()
    t.roll_back = True
    with pytest.raises(StepFailed) as err:
        lifecycle.promote(t, SPEC, NEW, {})
    assert str(err.value) == ("prod still serves prod-ec-aaaaaaaa after the update "
                              "(rolled back?)")


@pytest.mark.parametrize(("promotion", "expected"), [
    ({"strategy": "CANARY", "canary_size_pct": 25, "linear_step_pct": 10},
     ("CANARY", 25, None)),
    ({"strategy": "LINEAR", "canary_size_pct": 25, "linear_step_pct": 10},
     ("LINEAR", None, 10)),
    ({"strategy": "ALL_AT_ONCE", "canary_size_pct": 25, "linear_step_pct": 10},
     ("ALL_AT_ONCE", None, None)),
])
def test_traffic_policy_carries_only_its_strategys_step(promotion, expected):
    spec = DeploymentSpec.model_validate(
        SPEC.model_dump(mode="json") | {"promotion": promotion | {
            "wait_interval_s": 120, "alarms": ["p99-alarm"]}})
    policy = pipeline.traffic_policy(spec)
    assert (policy.type, policy.canary_size_pct, policy.linear_step_pct) == expected
    assert (policy.wait_interval_s, policy.alarms) == (120, ["p99-alarm"])


def test_teardown_deletes_a_production_config_that_is_not_candidate_named():
    """A production made by hand (not by lmiflow) has a config and model whose names are not
    candidate names: leftover removal leaves them, teardown deletes them itself."""
    t = MemoryTarget()
    t.deployed("prod", "prod-config", "prod-model")
    t.deployed(NEW.endpoint, NEW.endpoint_config, NEW.model)
    assert lifecycle.teardown(t, "prod") == [
        "endpoint prod", f"endpoint {NEW.endpoint}", f"endpoint_config {NEW.endpoint_config}",
        f"model {NEW.model}", "endpoint config prod-config", "model prod-model"]
    assert t.list_resources("prod") == {"models": [], "endpoint_configs": [], "endpoints": []}


class StrictNames(MemoryTarget):
    """Like SageMaker, refuses to look up a config without a name."""

    def config_model_name(self, config_name):
        assert config_name is not None, "DescribeEndpointConfig needs a name"
        return super().config_model_name(config_name)


def test_teardown_without_production_removes_candidates_only():
    t = StrictNames()
    t.deployed(OLD.endpoint, OLD.endpoint_config, OLD.model)
    assert lifecycle.teardown(t, "prod") == [
        f"endpoint {OLD.endpoint}", f"endpoint_config {OLD.endpoint_config}",
        f"model {OLD.model}"]


@pytest.mark.parametrize(("price", "count", "usd_per_instance"), [
    (6.0, 2, 3.0), (None, 1, None)])
def test_benchmark_prices_one_instance_and_counts_them(monkeypatch, price, count,
                                                       usd_per_instance):
    seen = {}

    def fake_bench(target, endpoint, cfg, *, tokenizer, tokenizer_source, gates, on_progress,
                   production, load_tokenizer=True):
        seen.update(target=target, endpoint=endpoint, cfg=cfg, tokenizer=tokenizer,
                    tokenizer_source=tokenizer_source, gates=gates, on_progress=on_progress,
                    production=production)
        return BenchResult()

    monkeypatch.setattr(lifecycle, "bench_endpoint", fake_bench)
    t = MemoryTarget()
    plan = SimpleNamespace(chosen=SimpleNamespace(usd_per_hour=price, instance_count=count))

    def progress(level, done, of):
        return None

    assert lifecycle.benchmark(t, SPEC, "prod-c-x", plan, None, progress) == BenchResult()
    expected = pipeline.load_config(SPEC).model_copy(update={
        "usd_per_hour": usd_per_instance, "instances": count})
    assert seen == {"target": t, "endpoint": "prod-c-x", "cfg": expected, "tokenizer": None,
                    "tokenizer_source": None, "gates": SPEC.gates, "on_progress": progress,
                    "production": None}


class ComponentTarget(MemoryTarget):
    """A target that runs the model as an inference component: it promotes the component
    itself (the in-memory endpoint keeps its config) and says what it did."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.promoted: list[tuple] = []
        self.placed: list[tuple] = []

    def place_component(self, endpoint, model, component, tags, timeout_s):
        self.placed.append((endpoint, model, component))

    def promote_component(self, production, candidate_endpoint, endpoint_config, model,
                          component, tags, timeout_s, wait_interval_s=0):
        if component is None:
            return None
        self.promoted.append((production, candidate_endpoint, model, component, wait_interval_s))
        self.delete_endpoint(candidate_endpoint)
        return "component llama updated (rolling, one copy at a time)"


def test_a_component_is_promoted_by_the_target_and_production_smoke_tested():
    t = ComponentTarget()
    t.deployed("prod", OLD.endpoint_config, OLD.model)
    t.deployed(NEW.endpoint, NEW.endpoint_config, NEW.model)
    component = component_plan()
    names = NEW.model_copy(update={"component": component})
    result = lifecycle.promote(t, SPEC, names, TAGS)
    assert t.promoted == [("prod", NEW.endpoint, NEW.model, component,
                           SPEC.promotion.wait_interval_s)]
    assert result.action == "component llama updated (rolling, one copy at a time)"
    assert result.production_smoke_test.passed
    assert f"endpoint {NEW.endpoint}" in result.removed
    # the endpoint itself was not updated: it still runs the config it had
    assert t.describe("prod").config_name == OLD.endpoint_config


class IdleComponentTarget(ComponentTarget):
    """Promotion left production's component at zero copies (min copies 0)."""

    def starts_on_request(self, endpoint):
        return endpoint == "prod"

    def invoke(self, name, payload):
        raise AssertionError(f"{name} invoked: a request would start a copy")


def test_production_left_at_zero_copies_is_not_invoked_and_says_so():
    t = IdleComponentTarget()
    t.deployed("prod", OLD.endpoint_config, OLD.model)
    t.deployed(NEW.endpoint, NEW.endpoint_config, NEW.model)
    names = NEW.model_copy(update={"component": component_plan()})
    result = lifecycle.promote(t, SPEC, names, TAGS)
    assert result.production_smoke_test is None and result.starts_on_request


def test_the_candidate_component_is_placed_after_its_endpoint_is_in_service(clock):
    t = ComponentTarget()
    component = component_plan()
    lifecycle.create_endpoint(t, NEW.model_copy(update={"component": component}), TAGS, 900)
    assert t.placed == [(NEW.endpoint, NEW.model, component)]
