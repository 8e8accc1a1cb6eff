"""Every AWS request a SageMaker deploy sends, in order, before any is sent: what `--dry-run`
prints and report.json's `requests` holds. Each is built by the same functions the target
sends with (sagemaker.*_request, staging.planned_requests), so what is shown is what runs;
tests run the pipeline against moto and Stubber and compare.

Requests that depend on what the run finds carry `when`: polls repeat, a first deploy
creates production where a later one updates it, leftovers of an interrupted run are deleted
only if there are any, the candidate is removed only when the run does not promote, and the
calibration store is created or replaced depending on whether there was one. A
name the run learns only then (production's endpoint config, a leftover's spec hash) is
shown with `xxxxxxxx` for its hash, still valid for the service model.
"""

from __future__ import annotations

import json
from typing import Any

from lmiflow.redact import MASK
from lmiflow.targets import autoscaling_plan
from lmiflow.targets.aws_requests import AwsRequest, split_s3
from lmiflow.targets.base import PlannedRun
from lmiflow.targets.s3_lease import planned_lease_requests
from lmiflow.targets.s3_store import planned_update_requests
from lmiflow.targets.staging import StagingConfig, planned_requests
from lmiflow.targets.weights import s3_read_requests

UNKNOWN_HASH = "xxxxxxxx"


def _r(step: str, service: str, operation: str, when: str | None = None, **params: Any
       ) -> AwsRequest:
    return AwsRequest(service=service, operation=operation, params=params, step=step, when=when)


def describe_production(step: str, production: str, target: Any) -> list[AwsRequest]:
    """What `production_in_use` asks: the endpoint, its tags and its config's model."""
    return [
        _r(step, "sagemaker", "DescribeEndpoint", EndpointName=production),
        _r(step, "sagemaker", "ListTags", "if production exists",
           ResourceArn=target.endpoint_arn(production)),
        _r(step, "sagemaker", "DescribeEndpointConfig", "if production exists",
           EndpointConfigName=f"{production}-ec-{UNKNOWN_HASH}"),
    ]


def sweep(step: str, production: str, target: Any) -> list[AwsRequest]:
    """remove_leftovers: find this endpoint's candidate resources production does not use."""
    prefix = f"{production}-"
    gone = "for each one that production does not use"
    return [
        *describe_production(step, production, target),
        *components_in_use(step, production, target),
        _r(step, "sagemaker", "ListModels", NameContains=prefix),
        _r(step, "sagemaker", "ListEndpointConfigs", NameContains=prefix),
        _r(step, "sagemaker", "ListEndpoints", NameContains=prefix),
        *delete_endpoint(step, f"{prefix}c-{UNKNOWN_HASH}", target, gone),
        _r(step, "sagemaker", "DeleteEndpointConfig", gone,
           EndpointConfigName=f"{prefix}ec-{UNKNOWN_HASH}"),
        _r(step, "sagemaker", "DeleteModel", gone, ModelName=f"{prefix}m-{UNKNOWN_HASH}"),
    ]


def _component_mode(target: Any) -> bool:
    return getattr(target, "mode", "endpoint") == "inference_component"


def components_in_use(step: str, production: str, target: Any) -> list[AwsRequest]:
    """Component mode: the models production's components serve are in use too."""
    if not _component_mode(target):
        return []
    from lmiflow.targets import components_plan as cp

    return [cp.list_components_request(production).model_copy(update={
        "step": step, "when": "if production exists; then DescribeInferenceComponent of "
                              "each: the model it serves"})]


def delete_endpoint(step: str, endpoint: str, target: Any, when: str | None = None
                    ) -> list[AwsRequest]:
    """DeleteEndpoint; in component mode its components first, each waited for until gone."""
    out = []
    if _component_mode(target):
        from lmiflow.targets import components_plan as cp

        each = ("; then for each component on it: DeleteInferenceComponent, and "
                "DescribeInferenceComponent until it is gone")
        out.append(cp.list_components_request(endpoint).model_copy(
            update={"step": step, "when": (when or "first") + each}))
    return [*out, _r(step, "sagemaker", "DeleteEndpoint", when, EndpointName=endpoint)]


def deploy_requests(target: Any, run: PlannedRun, staging: StagingConfig | None = None
                    ) -> list[AwsRequest]:
    """The requests of one deploy on `target` (a SageMakerTarget), in the order they are sent;
    the preflight's simulation asks for the actions all the others need."""
    out = _deploy_requests(target, run, staging)
    needs = target.access_needs([r for r in out if r.service != "iam"])
    actions = sorted({n[0] for n in needs})
    return [r.model_copy(update={"params": {**r.params, "ActionNames": actions}})
            if r.operation == "SimulatePrincipalPolicy" else r for r in out]


def _deploy_requests(target: Any, run: PlannedRun, staging: StagingConfig | None
                     ) -> list[AwsRequest]:
    from lmiflow.targets.sagemaker_requests import (
        VARIANT_NAME,
        create_endpoint_config_request,
        create_endpoint_request,
        create_model_request,
        lease_key,
        lmi_image_uri,
        put_object_request,
        update_endpoint_request,
    )

    w = run.weights
    out: list[AwsRequest] = []
    lease_release: list[AwsRequest] = []
    if target.s3_uri:
        bucket, prefix = split_s3(target.s3_uri)
        take, lease_release = planned_lease_requests(
            bucket, lease_key(prefix, run.production), target.lease_ttl_s)
        out += take
        bucket, key = target.calibration_location()
        out.append(_r("choose_instance", "s3", "GetObject",
                      "the latency model's calibration store, if any", Bucket=bucket, Key=key))
    out += access_requests(target, run) + preflight_requests(target, run)
    if w.source.kind == "s3":
        out += s3_read_requests(w.source)
    if w.delivery == "staged" and w.prefix:
        out += planned_requests(w.source, w.prefix, staging)

    out += sweep("create_model", run.production, target)
    package, upload = target.package_plan(run.model, run.properties, w)
    if upload:
        out.append(put_object_request(upload + "serving.properties", run.properties.encode(),
                                      "text/plain; charset=utf-8")
                   .model_copy(update={"step": "create_model"}))
    env = dict(package.env)
    if w.token_to_container:
        env["HF_TOKEN"] = MASK
    out.append(create_model_request(
        run.model, target.role_arn, run.image_uri or lmi_image_uri(target.region), env,
        package.model_data, run.tags,
        network_isolation=w.network_isolation, vpc=target.vpc).model_copy(
            update={"step": "create_model"}))
    if run.component is not None:
        out += component_requests(target, run)
        return out + report_requests(target, run) + lease_release
    out.append(create_endpoint_config_request(run.endpoint_config, run.model, run.variant,
                                              run.tags).model_copy(
        update={"step": "configure_endpoint"}))

    poll = (f"every {target.poll_interval_s:g} s until InService or Failed, at most "
            f"{run.endpoint_timeout_s:.0f} s")
    out.append(create_endpoint_request(run.endpoint, run.endpoint_config, run.tags)
               .model_copy(update={"step": "create_endpoint"}))
    out.append(_r("create_endpoint", "sagemaker", "DescribeEndpoint", poll,
                  EndpointName=run.endpoint))
    out.append(_invoke("smoke_test", "InvokeEndpoint", run.endpoint, run.smoke_payload))
    out += tokenizer_requests(run, package.model_data)
    out.append(_invoke("benchmark", "InvokeEndpointWithResponseStream", run.endpoint,
                       {**run.bench_payload, "stream": True},
                       f"x {run.bench_requests}: the benchmark's requests, concurrently"))
    if target.s3_uri:
        out += planned_update_requests(*target.calibration_location(), "benchmark",
                                       "to append this benchmark's predicted vs measured levels")
    if target.s3_uri:
        bucket, key = target.baseline_location(run.production)
        out.append(_r("gate", "s3", "GetObject", "production's last benchmark, if any",
                      Bucket=bucket, Key=key))

    out += describe_production("promote", run.production, target)[:2]
    out.append(_r("promote", "sagemaker", "DeleteEndpoint",
                  "before production changes (its benchmark is done): at most two fleets",
                  EndpointName=run.endpoint))
    out.append(create_endpoint_request(run.production, run.endpoint_config, run.tags)
               .model_copy(update={"step": "promote",
                                   "when": "on the first deploy: no production yet"}))
    scaled = run.autoscaling is not None
    update = update_endpoint_request(run.production, run.endpoint_config, run.policy,
                                     retain_count=scaled)
    out.append(_r("promote", "sagemaker", "DescribeEndpoint",
                  "when production exists: refuse a busy endpoint",
                  EndpointName=run.production))
    out += before_update_requests(run)
    out.append(update.model_copy(update={
        "step": "promote",
        "when": "when production exists: blue/green" + (
            ", at the instance count production scaled to (retained only when it is a "
            "scalable target)" if scaled else "")}))
    out.append(_r("promote", "sagemaker", "DescribeEndpoint", poll,
                  EndpointName=run.production))
    out.append(_invoke("promote", "InvokeEndpoint", run.production, run.smoke_payload))
    out += sweep("promote", run.production, target)
    out += save_baseline(target, run)

    out += [r.model_copy(update={"step": "autoscale"})
            for r in autoscaling_plan.planned_requests(run.production, VARIANT_NAME,
                                                       run.autoscaling)["apply"]]

    not_promoted = "only when the run does not promote"
    out += [r.model_copy(update={"step": "cleanup", "when": not_promoted})
            for r in describe_production("cleanup", run.production, target)]
    out += [
        _r("cleanup", "sagemaker", "DeleteEndpoint", not_promoted, EndpointName=run.endpoint),
        _r("cleanup", "sagemaker", "DeleteEndpointConfig", not_promoted,
           EndpointConfigName=run.endpoint_config),
        _r("cleanup", "sagemaker", "DeleteModel", not_promoted, ModelName=run.model),
    ]
    # the lease is listed last, as the run holds it throughout
    return out + report_requests(target, run) + lease_release


def tokenizer_requests(run: PlannedRun, model_data: str | None) -> list[AwsRequest]:
    """SageMakerTarget.model_files, for the benchmark: with no copy of the model's tokenizer
    on the runner it counts tokens with the one in the candidate's model files. A file that
    is not there is skipped."""

    when = "when the runner has no copy of the model's tokenizer"
    out = [
        _r("benchmark", "sagemaker", "DescribeEndpoint", when, EndpointName=run.endpoint),
        _r("benchmark", "sagemaker", "DescribeEndpointConfig", when,
           EndpointConfigName=run.endpoint_config),
        _r("benchmark", "sagemaker", "DescribeModel", when, ModelName=run.model),
    ]
    if model_data:  # staged or s3:// weights: their prefix; s3 packaging: the model's folder
        bucket, key = split_s3(model_data)
        out += [_r("benchmark", "s3", "GetObject", when + "; if the file exists",
                   Bucket=bucket, Key=key + name)
                for name in ("serving.properties", *run.tokenizer_files)]
    return out


def component_requests(target: Any, run: PlannedRun) -> list[AwsRequest]:
    """From configure_endpoint on, in inference-component mode (targets/components_plan.py):
    the candidate endpoint with the candidate component on it, tested and benchmarked
    through the component; then production's component created (the endpoint too on a first
    deploy) or updated copy by copy, its copies' auto scaling, and on a rejection the
    candidate removed, component first (an endpoint with components cannot be deleted)."""
    from lmiflow.targets import components_plan as cp
    from lmiflow.targets.iam import account_of
    from lmiflow.targets.sagemaker_requests import create_endpoint_request

    c = run.component
    assert c is not None
    poll = (f"every {target.poll_interval_s:g} s until InService or Failed, at most "
            f"{run.endpoint_timeout_s:.0f} s")
    first_copy = (f"every {target.poll_interval_s:g} s until a copy runs (CurrentCopyCount "
                  "1 or more), at most " f"{run.endpoint_timeout_s:.0f} s")

    def step(req: AwsRequest, name: str, when: str | None = None) -> AwsRequest:
        return req.model_copy(update={"step": name, "when": when})

    out = [
        step(cp.endpoint_config_request(run.endpoint_config, c, target.role_arn or "",
                                        run.variant, run.tags), "configure_endpoint"),
        step(create_endpoint_request(run.endpoint, run.endpoint_config, run.tags),
             "create_endpoint"),
        _r("create_endpoint", "sagemaker", "DescribeEndpoint", poll, EndpointName=run.endpoint),
        step(cp.create_component_request(c.candidate, run.endpoint, run.model, c, run.tags),
             "create_endpoint"),
        step(cp.describe_component_request(c.candidate), "create_endpoint", first_copy),
        _invoke("smoke_test", "InvokeEndpoint", run.endpoint, run.smoke_payload,
                component=c.candidate),
        # the variant names no model in this mode: model_files stops at the endpoint config
        *tokenizer_requests(run, None)[:2],
        _invoke("benchmark", "InvokeEndpointWithResponseStream", run.endpoint,
                {**run.bench_payload, "stream": True},
                f"x {run.bench_requests}: the benchmark's requests, concurrently",
                component=c.candidate),
    ]
    if target.s3_uri:
        out += planned_update_requests(*target.calibration_location(), "benchmark",
                                       "to append this benchmark's predicted vs measured levels")
        bucket, key = target.baseline_location(run.production)
        out.append(_r("gate", "s3", "GetObject", "production's last benchmark, if any",
                      Bucket=bucket, Key=key))
    first = "on the first deploy: no production endpoint yet"
    new = "when production's endpoint has no such component yet (this or a first deploy)"
    exists = "when production's component exists: a rolling update, copy by copy"
    out += describe_production("promote", run.production, target)[:2]
    out += [
        step(cp.delete_component_request(c.candidate), "promote",
             "before production changes (its benchmark is done): at most two fleets"),
        step(cp.describe_component_request(c.candidate), "promote", "until it is gone"),
        *delete_endpoint("promote", run.endpoint, target),
        _r("promote", "sagemaker", "DescribeEndpoint", "does production's endpoint exist",
           EndpointName=run.production),
        step(create_endpoint_request(run.production, run.endpoint_config, run.tags),
             "promote", first),
        _r("promote", "sagemaker", "DescribeEndpoint", poll + f"; {first}",
           EndpointName=run.production),
        step(cp.describe_component_request(c.name), "promote",
             "does production have this component"),
        step(cp.create_component_request(c.name, run.production, run.model, c, run.tags),
             "promote", new),
        step(cp.update_component_request(c.name, run.model, c, run.policy.wait_interval_s),
             "promote", exists),
        step(cp.describe_component_request(c.name), "promote",
             (f"{poll}; after a create also until a copy runs; after an update no copy is "
              "waited for (min copies 0: an idle component gets one only on a request)"
              if c.scales_to_zero else first_copy)
             + ", serving the new model (a failed update rolls back by itself)"),
    ]
    partition, account = account_of(target.role_arn) if target.role_arn else ("aws", "")
    arn = cp.step_policy_arn(target.region, account or "000000000000", partition, c.name)
    out += [step(r, "promote", "the copies' auto scaling (kept across updates)")
            for r in cp.scaling_requests(c, arn)]
    out.append(_invoke("promote", "InvokeEndpoint", run.production, run.smoke_payload,
                       "unless no copy runs: production then starts on its next request"
                       if c.scales_to_zero else None, component=c.name))
    out += sweep("promote", run.production, target)
    out += save_baseline(target, run)
    not_promoted = "only when the run does not promote"
    out += [r.model_copy(update={"step": "cleanup", "when": not_promoted})
            for r in describe_production("cleanup", run.production, target)]
    out += components_in_use("cleanup", run.production, target)
    out += [
        *delete_endpoint("cleanup", run.endpoint, target, not_promoted),
        _r("cleanup", "sagemaker", "DeleteEndpointConfig", not_promoted,
           EndpointConfigName=run.endpoint_config),
        _r("cleanup", "sagemaker", "DeleteModel", not_promoted, ModelName=run.model),
    ]
    return out


def before_update_requests(run: PlannedRun) -> list[AwsRequest]:
    """What update_endpoint asks first when the run scales production: is production's
    variant a scalable target, does the update change its instance type (then the target is
    removed: SageMaker refuses that update otherwise; targets.autoscaling_plan)."""
    from lmiflow.targets.sagemaker_requests import VARIANT_NAME

    if run.autoscaling is None:
        return []
    groups = autoscaling_plan.planned_requests(run.production, VARIANT_NAME, run.autoscaling)
    first, *removal = groups["before_update"]
    scalable = "when production exists and is a scalable target"
    return [first.model_copy(update={"step": "promote", "when": "when production exists"}),
            _r("promote", "sagemaker", "DescribeEndpointConfig", scalable + ": its instance type",
               EndpointConfigName=f"{run.production}-ec-{UNKNOWN_HASH}"),
            _r("promote", "sagemaker", "DescribeEndpointConfig", scalable + ": the new one's",
               EndpointConfigName=run.endpoint_config),
            *(r.model_copy(update={"step": "promote"}) for r in removal)]


def save_baseline(target: Any, run: PlannedRun) -> list[AwsRequest]:
    """After a promotion: the candidate's benchmark becomes production's baseline."""
    if not target.s3_uri:
        return []
    bucket, key = target.baseline_location(run.production)
    return [_r("promote", "s3", "PutObject", "the candidate's benchmark", Bucket=bucket,
               Key=key, Body="<benchmark JSON>", ContentType="application/json")]


def access_requests(target: Any, run: PlannedRun) -> list[AwsRequest]:
    """aws_preflight: who calls, and may it (the preflight step's first question); the
    actions asked are filled in from the whole list (deploy_requests)."""
    from lmiflow.targets.iam import account_of

    partition, account = account_of(target.role_arn) if target.role_arn else ("aws", "")
    caller = f"arn:{partition}:iam::{account or '<account>'}:role/<the caller's role>"
    return [
        _r("preflight", "sts", "GetCallerIdentity"),
        _r("preflight", "iam", "SimulatePrincipalPolicy",
           "once per resource and request context: the caller's permissions for this run",
           PolicySourceArn=caller, ActionNames=[]),
        _r("preflight", "sagemaker", "ListEndpoints",
           "only when the caller may not simulate its permissions", MaxResults=1),
    ]


def report_requests(target: Any, run: PlannedRun) -> list[AwsRequest]:
    """After the run: production as the run leaves it, and the report files kept in S3."""
    out = describe_production("report", run.production, target)[:2]
    folder = target.report_folder(run.production, run.endpoint) if target.s3_uri else None
    for name, kind in (("report.json", "application/json"),
                       ("report.md", "text/markdown; charset=utf-8"),
                       ("report.html", "text/html; charset=utf-8")):
        if folder:
            bucket, key = folder
            out.append(_r("report", "s3", "PutObject", "the run's report", Bucket=bucket,
                          Key=key + name, Body=f"<{name}>", ContentType=kind))
    return out


def preflight_requests(target: Any, run: PlannedRun) -> list[AwsRequest]:
    """What lifecycle.preflight asks before anything is created: the rollback alarms exist,
    production's fleet as it is, the account's quota for the peak's instance types."""
    from lmiflow.targets.blue_green import QUOTA_SERVICE_CODE
    from lmiflow.targets.sagemaker_requests import describe_alarms_request

    first = "before anything is created"
    out = []
    if run.policy.alarms:
        out.append(describe_alarms_request(run.policy.alarms).model_copy(
            update={"step": "preflight", "when": first}))
    out += [
        _r("preflight", "sagemaker", "DescribeEndpoint", first, EndpointName=run.production),
        _r("preflight", "sagemaker", "DescribeEndpointConfig", "if production exists: its "
           "instances", EndpointConfigName=f"{run.production}-ec-{UNKNOWN_HASH}"),
        _r("preflight", "service-quotas", "ListServiceQuotas",
           "all pages: the 'ml.<type> for endpoint usage' quotas", ServiceCode=QUOTA_SERVICE_CODE),
    ]
    if run.component is not None:  # check_shared_endpoint, before the fleet is described
        shared = "if production exists: the instance type and limits its config fixed"
        out[-3:-3] = [
            _r("preflight", "sagemaker", "DescribeEndpoint", first, EndpointName=run.production),
            _r("preflight", "sagemaker", "DescribeEndpointConfig", shared,
               EndpointConfigName=f"{run.production}-ec-{UNKNOWN_HASH}")]
    return out


def _invoke(step: str, operation: str, endpoint: str, payload: dict, when: str | None = None,
            component: str | None = None) -> AwsRequest:
    accept = ("application/jsonlines" if operation == "InvokeEndpointWithResponseStream"
              else "application/json")
    extra = {"InferenceComponentName": component} if component else {}
    return _r(step, "sagemaker-runtime", operation, when, EndpointName=endpoint,
              ContentType="application/json", Accept=accept,
              Body=json.dumps(payload).encode("utf-8"), **extra)
