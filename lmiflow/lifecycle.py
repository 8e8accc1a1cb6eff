"""A candidate endpoint's life, free of Prefect: create it, wait for it, test and benchmark it
(and keep the benchmark next to the latency model's prediction, to calibrate it), promote it
to production or remove it, and tear everything down. Tasks call these once each
(adding retries, artifacts and log lines); tests call them directly, without an API server.

Every function takes the Target it acts on, so the same code runs on SageMaker and locally.
What production uses is never deleted: cleanup, leftover removal and promotion all ask first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from pydantic import BaseModel, SecretStr

from lmiflow import endpoint_plan, pipeline
from lmiflow.bench.gates import Verdict, evaluate
from lmiflow.bench.loadgen import ProgressFn, bench_endpoint
from lmiflow.bench.metrics import BenchResult
from lmiflow.bench.tokens import TokenizerNotFound, load_tokenizer
from lmiflow.calibration_store import add_records
from lmiflow.errors import NotAnswering, StepFailed, UserInputError
from lmiflow.pipeline import Candidate, Names
from lmiflow.report.model import (
    LevelComparison,
    PredictedVsMeasured,
    Promotion,
    PromotionPlan,
    SmokeTest,
)
from lmiflow.report.outcome import ProductionState
from lmiflow.sizing.accelerators import facts_for, load_accelerators
from lmiflow.sizing.autoscaling import ScalingPlan
from lmiflow.sizing.calibration import CalibrationRecord, records_for_option, side_by_side
from lmiflow.sizing.model_spec import ModelSpec
from lmiflow.sizing.planner import Plan
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.aws_requests import AwsRequest
from lmiflow.targets.base import (
    TERMINAL_STATUSES,
    EndpointStatus,
    EndpointVariant,
    Target,
    WaitTimeout,
)
from lmiflow.targets.blue_green import FleetPeak, quota_error
from lmiflow.targets.staging import Progress, StagingReport
from lmiflow.targets.weights import WeightsPlan, hub_token

log = logging.getLogger(__name__)
OnStatus = Callable[[EndpointStatus, float], None]
# the runner's Hub token by its secret's name (a recording passes a stand-in)
TokenFn = Callable[[str | None], "SecretStr | None"]


class CreatedModel(BaseModel):
    model: str
    model_data: str = ""
    removed_leftovers: list[str] = []


class CreatedEndpoint(BaseModel):
    endpoint: str
    status: str
    seconds: float
    url: str | None = None


# ---- what production uses, and what is left over ---------------------------------------------

def production_in_use(target: Target, production: str) -> set[str]:
    """The endpoint configs and models production serves or is being updated to (empty when
    there is no production): a promotion interrupted half-way still owns its new config."""
    prod = target.describe(production)
    if prod is None:
        return set()
    in_use: set[str] = set()
    for config in (prod.config_name, prod.pending_config_name):
        if config:
            model = target.config_model_name(config)
            in_use |= {config, model} if model else {config}
    return in_use | target.models_in_use(production)


def production_state(target: Target, production: str) -> ProductionState:
    """What production serves now and since when: what a rejected or failed run tells its
    reader is unchanged."""
    st = target.describe(production)
    if st is None:
        return ProductionState(endpoint=production)
    return ProductionState(endpoint=production, status=st.status, config=st.config_name,
                           since=st.since, failure_reason=st.failure_reason)


def remove_leftovers(target: Target, production: str) -> list[str]:
    """Candidate resources of this endpoint that production does not use (what an interrupted
    run left, or what production ran before a promotion): deleted. Returns what was removed."""
    in_use = production_in_use(target, production)
    found = target.list_resources(f"{production}-")
    removed = []
    for kind, delete in (("endpoints", target.delete_endpoint),
                         ("endpoint_configs", target.delete_endpoint_config),
                         ("models", target.delete_model)):
        for name in found.get(kind, []):
            if (target.is_candidate_resource(production, name) and name not in in_use
                    and delete(name)):
                removed.append(f"{kind[:-1]} {name}")
    return removed


# ---- production before anything is created ---------------------------------------------------

def check_production(target: Target, spec: DeploymentSpec) -> EndpointStatus | None:
    """Production's status, asked before anything is created. A Failed production serves
    nothing and takes no blue/green update, so a run would create and benchmark a candidate
    only to fail at promote: unless promotion.replace_failed allows replacing it, stop now."""
    prod = target.describe(spec.name)
    if prod is not None and prod.status == "Failed" and not spec.promotion.replace_failed:
        raise UserInputError(
            "promotion.replace_failed",
            f"production endpoint {spec.name} is Failed "
            f"({(prod.failure_reason or 'no reason given')[:160]}): it serves nothing and "
            "cannot be updated; rerun with --replace-failed (or set promotion.replace_failed: "
            "true) to replace it with this run's candidate")
    return prod


def regression_baseline(production: EndpointStatus | None, baseline: BenchResult | None
                        ) -> tuple[BenchResult | None, str | None]:
    """The baseline the regression check compares with, and a note when it is set aside.
    With production down, anything that passes the SLO gates beats what serves now
    (nothing): holding a repair to the old benchmark could keep production down."""
    if baseline is not None and production is not None and production.status == "Failed":
        return None, (f"production {production.name} is Failed: the regression check against "
                      "its last benchmark (report.baseline) is not enforced; the SLO gates "
                      "decide")
    return baseline, None


def gate(target: Target, spec: DeploymentSpec, bench: BenchResult,
         baseline: BenchResult | None) -> Verdict:
    """The SLO gates, and the regression check against production's last benchmark unless
    production is down (regression_baseline)."""
    enforced, note = regression_baseline(target.describe(spec.name), baseline)
    verdict = evaluate(spec.gates, bench, enforced, spec.regression.max_regression_pct,
                       confidence=spec.regression.confidence,
                       noise_floor_pct=spec.regression.noise_floor_pct)
    if note:
        verdict.notes.append(note)
    return verdict


# ---- the candidate ------------------------------------------------------------------------------

def stage_weights(target: Target, spec: DeploymentSpec, weights: WeightsPlan,
                  on_progress: Callable[[Progress], None] | None = None, *,
                  token_of: TokenFn = hub_token) -> StagingReport | None:
    """Copy the weights where the container reads them, with the runner's Hub token (read
    here, never passed around): None when the plan has nothing to copy."""
    token = token_of(spec.model.hf_token_secret) if weights.source.kind == "hub" else None
    return target.stage_weights(weights, token, on_progress)


def create_model(target: Target, spec: DeploymentSpec, candidate: Candidate,
                 tags: dict[str, str], *, token_of: TokenFn = hub_token) -> CreatedModel:
    """Remove what an earlier interrupted run left, package serving.properties the way the
    target takes it (secret entries filled in only here: pipeline.staged_properties), and
    create the model (network-isolated when its weights come from S3; with the runner's Hub
    token only when the config opts in)."""
    names, weights = candidate.names, candidate.weights
    removed = remove_leftovers(target, names.production)
    if removed:
        log.warning("removed leftovers of an earlier run: %s", ", ".join(removed))
    package = target.package(names.model,
                             pipeline.staged_properties(spec, candidate.properties), weights)
    env = dict(package.env)
    if weights.token_to_container:
        token = token_of(spec.model.hf_token_secret)
        if token is None:
            raise StepFailed("model.token_to_container is set but there is no Hub token "
                             "(HF_TOKEN or model.hf_token_secret)")
        env["HF_TOKEN"] = token.get_secret_value()
    target.create_model(names.model, package.model_data, candidate.image_uri, env, tags,
                        network_isolation=weights.network_isolation)
    return CreatedModel(model=names.model, model_data=package.model_data,
                        removed_leftovers=removed)


def preflight(target: Target, candidate: Candidate, requests: Sequence[AwsRequest] = ()
              ) -> PromotionPlan | None:
    """What must hold before anything is created, asked of the platform: the rollback alarms
    exist (a misspelt one would never fire, so nothing would roll back) and the peak fleet,
    with production as it is now, fits the account's quota for the instance type. Raises
    UserInputError naming the config field; returns the plan with the described peak.
    First of all: may these credentials act here at all (region, identity, the permissions
    the run needs; the target's preflight), so a missing credential is one line, not a
    traceback from the first call that needs it. The permissions are those of `requests`,
    the run's planned requests: the same the IAM policy is written from."""
    for note in target.preflight(target.access_needs(requests)):
        log.info(note)
    plan = candidate.promotion
    if plan is None:
        return None
    missing = target.missing_alarms(plan.alarms)
    if missing:
        raise UserInputError("promotion.alarms", f"no CloudWatch alarm named "
                                                 f"{', '.join(missing)} in this account and "
                                                 "region (SageMaker would never roll back on it)")
    # a component joining an existing endpoint: its instance type and limits are fixed
    target.check_shared_endpoint(candidate.names.production, candidate.names.component)
    plan = endpoint_plan.with_peak(plan, target.production_fleet(candidate.names.production))
    quotas = target.endpoint_quotas(list(plan.peak_instances))
    over = quota_error(FleetPeak(instances=plan.peak_instances, assumption=plan.peak_assumption,
                                 quota_names=plan.quota_names), quotas)
    if over:
        raise UserInputError("instance.count", over)
    scaling, quota = candidate.autoscaling, quotas.get(plan.instance_type)
    if scaling is not None and quota is not None and scaling.max_instances > quota:
        name = plan.quota_names.get(plan.instance_type, "the endpoint usage quota")
        raise UserInputError("autoscaling.max", f"{scaling.max_instances} x "
                             f"{plan.instance_type} is above the account's quota '{name}' of "
                             f"{quota:g}: production could never scale that far")
    return plan


def configure_endpoint(target: Target, candidate: Candidate, p: Plan, tags: dict[str, str]
                       ) -> EndpointVariant:
    """The endpoint config: the target's variant for the plan's instances, on the host the
    image needs (AMI, routing)."""
    names = candidate.names
    variant = pipeline.endpoint_variant(candidate, p, target)
    target.create_endpoint_config(names.endpoint_config, names.model, variant, tags,
                                  component=names.component)
    return variant


def wait_in_service(target: Target, endpoint: str, timeout_s: float,
                    on_status: OnStatus | None = None) -> EndpointStatus:
    """Wait (bounded) for InService; Failed or a timeout raise StepFailed with the reason."""
    try:
        st = target.wait(endpoint, timeout_s, on_status=on_status)
    except WaitTimeout as exc:
        raise StepFailed(f"{endpoint} not InService within {timeout_s:.0f} s "
                         f"(promotion.endpoint_timeout_s): {exc}") from None
    if st.status != "InService":
        raise StepFailed(f"{endpoint} is {st.status}: {st.failure_reason or 'no reason given'}")
    return st


def create_endpoint(target: Target, names: Names, tags: dict[str, str], timeout_s: float,
                    on_status: OnStatus | None = None) -> CreatedEndpoint:
    t0 = time.monotonic()
    target.create_endpoint(names.endpoint, names.endpoint_config, tags)
    st = wait_in_service(target, names.endpoint, timeout_s, on_status)
    # the model on its instances, where it is an inference component (its first copy)
    target.place_component(names.endpoint, names.model, names.component, tags, timeout_s)
    return CreatedEndpoint(endpoint=names.endpoint, status=st.status,
                           seconds=time.monotonic() - t0, url=st.url)


def smoke_test(target: Target, spec: DeploymentSpec, endpoint: str) -> SmokeTest:
    """One prompt; passed says whether the answer is a real generation."""
    t0 = time.monotonic()
    outputs: list[str] = []
    why = None
    timeout_s = spec.benchmark.timeout_s
    for payload in pipeline.smoke_payloads(spec):  # inputs, and messages if benchmarked
        try:
            body = target.invoke(endpoint, payload, timeout_s=timeout_s)
        except TimeoutError:
            raise NotAnswering(endpoint, "the smoke test's prompt", f"the per-request timeout "
                               f"of {timeout_s:g} s (benchmark.timeout_s)") from None
        ok, text, reason = pipeline.check_smoke_response(body)
        outputs.append(text)
        if not ok:
            why = reason if "inputs" in payload else f"messages form: {reason}"
            break
    return SmokeTest(passed=why is None, output=outputs[0] if why is None else outputs[-1],
                     endpoint=endpoint, seconds=time.monotonic() - t0, error=why)


def require_passed(result: SmokeTest) -> SmokeTest:
    """A candidate that fails its smoke test goes no further."""
    if not result.passed:
        raise StepFailed(f"smoke test of {result.endpoint} failed: {result.error}")
    return result


def benchmark(target: Target, spec: DeploymentSpec, endpoint: str, p: Plan,
              tokenizer_dir: str | None, on_progress: ProgressFn | None = None, *,
              load_tokenizers: bool = True) -> BenchResult:
    """The config's benchmark against the endpoint, priced at the chosen instance's rate.
    The tokenizer comes from the model's directory when it is on disk, else bench finds it
    where the endpoint's weights are. With regression.compare_with production_now, production
    is measured in the same run, interleaved (BenchResult.production)."""
    cfg = pipeline.load_config(spec).model_copy(update={
        "usd_per_hour": (p.chosen.usd_per_hour / p.chosen.instance_count
                         if p.chosen.usd_per_hour else None),
        "instances": p.chosen.instance_count})
    tokenizer = None
    if tokenizer_dir:
        try:
            tokenizer = load_tokenizer(tokenizer_dir,
                                       trust_remote_code=spec.model.trust_remote_code)
        except TokenizerNotFound as exc:
            log.warning("benchmark: %s; looking where the endpoint's weights are", exc)
    production = None
    if spec.regression.compare_with == "production_now":
        prod = target.describe(spec.name)
        production = spec.name if prod is not None and prod.status == "InService" else None
    return bench_endpoint(target, endpoint, cfg, tokenizer=tokenizer,
                          tokenizer_source=tokenizer_dir if tokenizer else None,
                          gates=spec.gates, on_progress=on_progress, production=production,
                          load_tokenizer=load_tokenizers)


# ---- production -------------------------------------------------------------------------------

def promote(target: Target, spec: DeploymentSpec, names: Names, tags: dict[str, str],
            on_status: OnStatus | None = None) -> Promotion:
    """Candidate config becomes production: create production on a first deploy, else a
    blue/green update; then smoke-test production, and delete the configuration production
    ran before. The candidate endpoint goes first, before production changes: its benchmark is
    done, and a blue/green update starts a green fleet next to blue, so keeping the candidate
    would hold three fleets. Safe to retry: a second try finds production already on the new
    config and only finishes the cleanup."""
    prod = target.describe(spec.name)
    if prod is not None and prod.status not in TERMINAL_STATUSES:
        # An update in flight (an interrupted run's, or another runner's): let it settle.
        prod = target.wait(spec.name, spec.promotion.endpoint_timeout_s, on_status)
    previous = prod.config_name if prod else None
    # Where the model is an inference component, the target promotes the component (created,
    # or updated copy by copy with its own rollback) and leaves the endpoint as it is.
    action = target.promote_component(
        spec.name, names.endpoint, names.endpoint_config, names.model, names.component, tags,
        spec.promotion.endpoint_timeout_s, spec.promotion.wait_interval_s)
    if action is not None:
        # a component left at zero copies starts on its next request: a smoke test would be
        # that request, and would wait (or fail) for the cold start the report states instead
        idle = target.starts_on_request(spec.name)
        smoke = None if idle else smoke_test(target, spec, spec.name)
        if smoke is not None and not smoke.passed:
            raise StepFailed(f"smoke test of {spec.name} failed: {smoke.error}")
        return Promotion(action=action, previous_config=previous,
                         removed=[f"endpoint {names.endpoint}",
                                  *remove_leftovers(target, spec.name)],
                         production_smoke_test=smoke, starts_on_request=idle)
    serving = (prod is not None and prod.config_name == names.endpoint_config
               and prod.status == "InService")
    early: list[str] = []
    if not serving and target.delete_endpoint(names.endpoint):
        early.append(f"endpoint {names.endpoint}")
    replaced = prod is not None and prod.status == "Failed" and spec.promotion.replace_failed
    if replaced:
        # A Failed endpoint takes no update: delete it, then create it on the candidate's
        # config. What it ran before goes with the leftovers below.
        target.delete_endpoint(spec.name)
        _wait_gone(target, spec.name, spec.promotion.endpoint_timeout_s)
        prod = None
    if prod is None:
        target.create_endpoint(spec.name, names.endpoint_config, tags)
        action = "replaced the Failed production" if replaced else "created"
    elif serving:
        action = "already serving this config"
    else:
        target.update_endpoint(spec.name, names.endpoint_config, pipeline.traffic_policy(spec),
                               autoscaled=spec.autoscaling is not None)
        action = f"updated ({spec.promotion.strategy})"
    st = wait_in_service(target, spec.name, spec.promotion.endpoint_timeout_s, on_status)
    if st.config_name and st.config_name != names.endpoint_config:
        raise StepFailed(f"{spec.name} still serves {st.config_name} after the update "
                         "(rolled back?)")
    smoke = smoke_test(target, spec, spec.name)
    if not smoke.passed:
        raise StepFailed(f"smoke test of {spec.name} failed: {smoke.error}")
    # Everything of this endpoint that production no longer uses: the candidate endpoint and
    # the config and model production ran before (also those of an earlier interrupted try).
    removed = early + remove_leftovers(target, spec.name)
    return Promotion(action=action, previous_config=previous, removed=removed,
                     production_smoke_test=smoke)


def autoscale(target: Target, production: str, plan: ScalingPlan | None) -> list[str]:
    """After promotion: production scales with its concurrent requests per the plan. Without
    autoscaling in the config nothing is asked of the platform (a run that does not scale
    needs no autoscaling permission); teardown removes a scaling left from earlier runs."""
    return [] if plan is None else target.apply_autoscaling(production, plan)


def _wait_gone(target: Target, name: str, timeout_s: float) -> None:
    """Deleting an endpoint can take a while (SageMaker: Deleting); its name is free after."""
    deadline = time.monotonic() + timeout_s
    while target.describe(name) is not None:
        if time.monotonic() >= deadline:
            raise StepFailed(f"{name} still exists {timeout_s:.0f} s after it was deleted")
        time.sleep(target.poll_interval_s)


def cleanup_candidate(target: Target, names: Names) -> list[str]:
    """Delete the candidate's endpoint, config and model unless production uses them (a
    promotion that went half-way may already serve the candidate's config)."""
    in_use = production_in_use(target, names.production)
    removed = []
    if target.delete_endpoint(names.endpoint):
        removed.append(f"endpoint {names.endpoint}")
    if names.endpoint_config not in in_use and target.delete_endpoint_config(
            names.endpoint_config):
        removed.append(f"endpoint config {names.endpoint_config}")
    if names.model not in in_use and target.delete_model(names.model):
        removed.append(f"model {names.model}")
    return removed


def teardown(target: Target, production: str, kept: list[str] | None = None) -> list[str]:
    """Delete production (endpoint, its config and model), every candidate resource, and the
    files stored for them that nothing left uses (target.remove_files). What was left on
    purpose is appended to `kept`, each with its reason."""
    removed: list[str] = []
    prod = target.describe(production)
    config = prod.config_name if prod else None
    model = target.config_model_name(config) if config else None
    models = {m for m in target.list_resources(f"{production}-").get("models", [])
              if target.is_candidate_resource(production, m)}
    used = target.files_of(production, sorted(models | ({model} if model else set())))
    if target.remove_autoscaling(production):
        removed.append(f"autoscaling of {production}")
    if target.delete_endpoint(production):
        removed.append(f"endpoint {production}")
    removed += remove_leftovers(target, production)
    if config and target.delete_endpoint_config(config):
        removed.append(f"endpoint config {config}")
    if model and target.delete_model(model):
        removed.append(f"model {model}")
    files, left = target.remove_files(production, used)
    if kept is not None:
        kept += left
    return removed + files


# ---- production's baseline ----------------------------------------------------------------------

def load_baseline(target: Target, production: str) -> BenchResult | None:
    data = target.load_baseline(production)
    return None if data is None else BenchResult.model_validate(data)


def save_baseline(target: Target, production: str, bench: BenchResult) -> str | None:
    return target.save_baseline(production, bench.model_dump(mode="json"))


# ---- the latency model's calibration --------------------------------------------------------

def predicted_vs_measured(model: ModelSpec, p: Plan, bench: BenchResult, *, run: str,
                          model_id: str, image_uri: str | None
                          ) -> tuple[list[CalibrationRecord], PredictedVsMeasured]:
    """The benchmark's levels next to what the plan predicted for its chosen option, with the
    factors the plan used (fitted or defaults) and the lengths the benchmark really sent.
    Pure. Open-loop levels are left out (their concurrency is a cap, not the load), as are
    levels that measured nothing; an accelerator without facts (the local target on a CPU)
    was never predicted, so there is nothing to compare."""
    c = p.chosen
    engine = p.request.engine
    accelerators = load_accelerators()
    # A local GPU has its driver's name (NVIDIA A100-SXM4-40GB); facts and fits the catalog's.
    facts = facts_for(c.accelerator, accelerators)
    name = facts.name if facts else c.accelerator
    factors = p.factors.get(name)
    section = PredictedVsMeasured(
        accelerator=name, engine=engine, tensor_parallel_degree=c.tensor_parallel_degree,
        image_version=_image_version(image_uri),
        fit=p.calibration.get(name), fit_records=factors.records if factors else 0)
    if factors is None:
        section.notes.append(f"no latency prediction for {name} (no accelerator facts): "
                             "nothing compared or recorded")
        return [], section
    records: list[CalibrationRecord] = []
    for lv in bench.levels:
        if lv.rate_rps is not None:
            section.notes.append(f"{lv.rate_rps:g} requests/s (open loop) not compared: "
                                 "its concurrency is a cap, not the load")
            continue
        inp = max(1, round(lv.input_length.mean or bench.settings.input_tokens))
        out = max(1, round(lv.output_length.mean or bench.settings.max_new_tokens))
        got = records_for_option(
            model, p.dtypes, c, engine, accelerators, p.calibration_used(),
            [lv.model_dump(mode="json")], inp, out, run=run, model=model_id,
            image_version=section.image_version)
        if not got:
            section.notes.append(f"concurrency {lv.concurrency}: no successful request, "
                                 "nothing measured")
            continue
        records += got
        (row,) = side_by_side(got)
        section.levels.append(LevelComparison(**row, input_tokens=inp, output_tokens=out))
    return records, section


def record_calibration(target: Target, model: ModelSpec, p: Plan, bench: BenchResult, *,
                       run: str, model_id: str, image_uri: str | None) -> PredictedVsMeasured:
    """Predicted vs measured per level (predicted_vs_measured), appended to the target's
    calibration store, which refits the factors the next plan uses."""
    records, section = predicted_vs_measured(model, p, bench, run=run, model_id=model_id,
                                             image_uri=image_uri)
    if not records:
        return section
    store, where = add_records(target, records)
    if where is None:
        section.notes.append("not kept: the target has nowhere to keep a calibration store")
        return section
    family = (section.accelerator, section.engine)
    refit = next((f for f in store.fits if (f.accelerator, f.engine) == family), None)
    return section.model_copy(update={"recorded": len(records), "store": where,
                                      "refit": refit})


def _image_version(image_uri: str | None) -> str | None:
    """The image's tag (0.33.0-lmi15.0.0-cu128), else its whole reference (a digest)."""
    if not image_uri:
        return None
    name = image_uri.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name and "@" not in name else image_uri
