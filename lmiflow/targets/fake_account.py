"""An AWS account that lives in memory: what a recording run of the deploy lifecycle talks to.

Why: the dry run's request list, the runner's IAM policy and the preflight's simulated
actions are taken from what the lifecycle really sends, not from a second description of it
that tests would have to keep in line. So a SageMakerTarget is given a session whose boto3
clients never reach the network: botocore's own `before-call` hook (the one its Stubber uses)
answers each call from this account's state, after botocore has validated the parameters,
and the target's guard records the request as it does for every real one.

The account holds just enough state for the lifecycle's questions: endpoints and their
statuses, endpoint configs, models, inference components, scalable targets, and S3 objects
with ETags and conditional writes. A `Scenario` seeds it (production exists or not, an
interrupted run's leftovers, a Failed production). An operation it does not know raises
NotRecordable: a new call in the lifecycle must be taught here, or the dry run fails loudly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import BaseModel

# The hash part of names that exist before the recorded run (production's earlier config and
# model, an interrupted run's candidate): hexadecimal like a spec hash, and shown as
# `xxxxxxxx` in the listing, since the real ones are known only when the run asks.
EARLIER_HASH = "0ea41e20"
LEFTOVER_HASH = "1ef70e20"
SHOWN_HASH = "xxxxxxxx"


class NotRecordable(RuntimeError):
    """The lifecycle sent a request the in-memory account cannot answer."""


class Scenario(BaseModel):
    """One branch of the lifecycle to record."""

    name: str
    description: str
    production: bool = True
    promoted: bool = True
    leftovers: bool = False  # what an interrupted run leaves: a candidate, its expired lease
    failed_production: bool = False
    stores: bool = True  # baseline, calibration store and staged weights already in S3
    may_simulate: bool = True  # the caller may ask IAM's policy simulator


class _Fault(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _now() -> dt.datetime:
    return dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _missing(what: str, name: str) -> _Fault:
    return _Fault("ValidationException", f"Could not find {what} \"{name}\".")


class FakeAccount:
    """SageMaker, S3, Application Auto Scaling, CloudWatch, Service Quotas, STS and IAM, as
    far as the lifecycle asks them."""

    def __init__(self, region: str, account: str, partition: str = "aws",
                 may_simulate: bool = True):
        self.region, self.account, self.partition = region, account, partition
        self.may_simulate = may_simulate
        self.endpoints: dict[str, dict] = {}
        self.configs: dict[str, dict] = {}
        self.models: dict[str, dict] = {}
        self.components: dict[str, dict] = {}
        self.scalable: dict[str, dict] = {}
        self.alarms: set[str] = set()
        self.objects: dict[tuple[str, str], tuple[bytes, str, dict]] = {}
        self.uploads: list[dict] = []
        self._writes = 0

    def arn(self, kind: str, name: str) -> str:
        return (f"arn:{self.partition}:sagemaker:{self.region}:{self.account}:{kind}/"
                f"{name.lower()}")

    # ---- seeding ------------------------------------------------------------------------

    def seed_endpoint(self, name: str, config: dict, model: str, status: str = "InService",
                      component: str | None = None) -> None:
        """An endpoint on `config` (a CreateEndpointConfig request's parameters) serving
        `model`, itself or as `component`."""
        self.models[model] = {"ModelName": model, "PrimaryContainer": {"Image": "earlier"},
                              "ExecutionRoleArn": "earlier"}
        self.configs[config["EndpointConfigName"]] = dict(config)
        self.endpoints[name] = {"config": config["EndpointConfigName"], "status": status,
                                "tags": [], "polls": 0}
        if component is not None:
            self.components[component] = {"endpoint": name, "model": model, "copies": 1,
                                           "status": "InService"}

    def seed_object(self, bucket: str, key: str, body: bytes = b"{}") -> None:
        self._put(bucket, key, body, {})

    # ---- answering ----------------------------------------------------------------------

    def answer(self, service: str, operation: str, params: dict) -> dict:
        handler: Callable[[dict], dict] | None = getattr(
            self, f"_{service.replace('-', '_')}_{operation}", None)
        if handler is None:
            raise NotRecordable(f"{service} {operation}: the in-memory account "
                                "(targets/fake_account.py) does not answer it yet")
        return handler(params)

    # -- identity, alarms, quotas --

    def _sts_GetCallerIdentity(self, p: dict) -> dict:
        return {"Account": self.account, "UserId": "AROAEXAMPLE:dry-run",
                "Arn": f"arn:{self.partition}:sts::{self.account}:assumed-role/"
                       "lmiflow-runner/dry-run"}

    def _iam_SimulatePrincipalPolicy(self, p: dict) -> dict:
        if not self.may_simulate:
            raise _Fault("AccessDenied", "not authorized to perform: "
                                         "iam:SimulatePrincipalPolicy", 403)
        return {"EvaluationResults": [
            {"EvalActionName": a, "EvalResourceName": r, "EvalDecision": "allowed"}
            for a in p["ActionNames"] for r in p.get("ResourceArns", ["*"])],
            "IsTruncated": False}

    def _cloudwatch_DescribeAlarms(self, p: dict) -> dict:
        return {"MetricAlarms": [{"AlarmName": n} for n in p.get("AlarmNames", [])],
                "CompositeAlarms": []}

    def _cloudwatch_PutMetricAlarm(self, p: dict) -> dict:
        self.alarms.add(p["AlarmName"])
        return {}

    def _cloudwatch_DeleteAlarms(self, p: dict) -> dict:
        self.alarms -= set(p["AlarmNames"])
        return {}

    def _service_quotas_ListServiceQuotas(self, p: dict) -> dict:
        return {"Quotas": []}  # none listed: the preflight then assumes no limit

    # -- endpoints --

    def _endpoint(self, name: str) -> dict:
        ep = self.endpoints.get(name)
        if ep is None:
            raise _missing("endpoint", name)
        return ep

    def _sagemaker_DescribeEndpoint(self, p: dict) -> dict:
        name = p["EndpointName"]
        ep = self._endpoint(name)
        if ep["status"] in ("Creating", "Updating"):
            ep["polls"] += 1
            if ep["polls"] > 1:  # one poll sees it still changing, the next InService
                ep["status"], ep["polls"] = "InService", 0
        config = self.configs.get(ep["config"], {})
        variants = [{"VariantName": v["VariantName"],
                     "CurrentInstanceCount": v.get("InitialInstanceCount", 1)}
                    for v in config.get("ProductionVariants", [])]
        out = {"EndpointName": name, "EndpointArn": self.arn("endpoint", name),
               "EndpointConfigName": ep["config"], "EndpointStatus": ep["status"],
               "CreationTime": _now(), "LastModifiedTime": _now(),
               "ProductionVariants": variants}
        if ep["status"] == "Failed":
            out["FailureReason"] = "the earlier model failed its health check"
        return out

    def _sagemaker_ListTags(self, p: dict) -> dict:
        name = p["ResourceArn"].rsplit("/", 1)[-1]
        ep = next((e for n, e in self.endpoints.items() if n.lower() == name), None)
        return {"Tags": ep["tags"] if ep else []}

    def _sagemaker_CreateEndpoint(self, p: dict) -> dict:
        name = p["EndpointName"]
        if name in self.endpoints:
            raise _Fault("ValidationException", f"Cannot create already existing endpoint "
                                                f"\"{self.arn('endpoint', name)}\".")
        self.endpoints[name] = {"config": p["EndpointConfigName"], "status": "Creating",
                                "tags": p.get("Tags", []), "polls": 0}
        return {"EndpointArn": self.arn("endpoint", name)}

    def _sagemaker_UpdateEndpoint(self, p: dict) -> dict:
        ep = self._endpoint(p["EndpointName"])
        ep.update(config=p["EndpointConfigName"], status="Updating", polls=0)
        return {"EndpointArn": self.arn("endpoint", p["EndpointName"])}

    def _sagemaker_DeleteEndpoint(self, p: dict) -> dict:
        name = p["EndpointName"]
        self._endpoint(name)
        if any(c["endpoint"] == name for c in self.components.values()):
            raise _Fault("ValidationException", "endpoint has inference components")
        del self.endpoints[name]
        return {}

    def _sagemaker_ListEndpoints(self, p: dict) -> dict:
        return {"Endpoints": [
            {"EndpointName": n, "EndpointArn": self.arn("endpoint", n),
             "EndpointStatus": e["status"], "CreationTime": _now(),
             "LastModifiedTime": _now()}
            for n, e in sorted(self.endpoints.items()) if p.get("NameContains", "") in n]}

    # -- endpoint configs and models --

    def _create(self, store: dict, kind: str, key: str, p: dict) -> dict:
        name = p[key]
        if name in store:
            raise _Fault("ValidationException", f"Cannot create already existing {kind} "
                                                f"\"{self.arn(kind.replace(' ', '-'), name)}\".")
        store[name] = dict(p)
        return {f"{key[:-4]}Arn": self.arn(kind.replace(" ", "-"), name)}

    def _delete(self, store: dict, kind: str, name: str) -> dict:
        if store.pop(name, None) is None:
            raise _missing(kind, name)
        return {}

    def _listing(self, store: dict, key: str, out_key: str, p: dict) -> dict:
        return {out_key: [{key: n, "CreationTime": _now()}
                          for n in sorted(store) if p.get("NameContains", "") in n]}

    def _sagemaker_CreateEndpointConfig(self, p: dict) -> dict:
        return self._create(self.configs, "endpoint config", "EndpointConfigName", p)

    def _sagemaker_DescribeEndpointConfig(self, p: dict) -> dict:
        name = p["EndpointConfigName"]
        if name not in self.configs:
            raise _missing("endpoint configuration", name)
        return {**self.configs[name], "EndpointConfigArn": self.arn("endpoint-config", name),
                "CreationTime": _now()}

    def _sagemaker_DeleteEndpointConfig(self, p: dict) -> dict:
        return self._delete(self.configs, "endpoint configuration", p["EndpointConfigName"])

    def _sagemaker_ListEndpointConfigs(self, p: dict) -> dict:
        return self._listing(self.configs, "EndpointConfigName", "EndpointConfigs", p)

    def _sagemaker_CreateModel(self, p: dict) -> dict:
        return self._create(self.models, "model", "ModelName", p)

    def _sagemaker_DescribeModel(self, p: dict) -> dict:
        name = p["ModelName"]
        if name not in self.models:
            raise _missing("model", name)
        return {**self.models[name], "ModelArn": self.arn("model", name),
                "CreationTime": _now()}

    def _sagemaker_DeleteModel(self, p: dict) -> dict:
        return self._delete(self.models, "model", p["ModelName"])

    def _sagemaker_ListModels(self, p: dict) -> dict:
        return self._listing(self.models, "ModelName", "Models", p)

    # -- inference components --

    def _component(self, name: str) -> dict:
        c = self.components.get(name)
        if c is None:
            raise _missing("inference component", name)
        return c

    def _sagemaker_CreateInferenceComponent(self, p: dict) -> dict:
        name = p["InferenceComponentName"]
        self.components[name] = {"endpoint": p["EndpointName"],
                                 "model": p["Specification"].get("ModelName"),
                                 "copies": p.get("RuntimeConfig", {}).get("CopyCount", 1),
                                 "status": "Creating"}
        return {"InferenceComponentArn": self.arn("inference-component", name)}

    def _sagemaker_UpdateInferenceComponent(self, p: dict) -> dict:
        c = self._component(p["InferenceComponentName"])
        c.update(model=p["Specification"].get("ModelName", c["model"]), status="Updating")
        return {"InferenceComponentArn": self.arn("inference-component",
                                                  p["InferenceComponentName"])}

    def _sagemaker_DescribeInferenceComponent(self, p: dict) -> dict:
        name = p["InferenceComponentName"]
        c = self._component(name)
        if c["status"] == "Deleting":
            del self.components[name]
            raise _missing("inference component", name)
        shown = dict(c)
        if c["status"] in ("Creating", "Updating"):
            c["status"] = "InService"  # the next poll finds it running
        return {"InferenceComponentName": name, "EndpointName": c["endpoint"],
                "InferenceComponentArn": self.arn("inference-component", name),
                "InferenceComponentStatus": shown["status"],
                "Specification": {"ModelName": c["model"]},
                "RuntimeConfig": {"DesiredCopyCount": c["copies"],
                                  "CurrentCopyCount": c["copies"]},
                "CreationTime": _now(), "LastModifiedTime": _now(), "VariantName": "AllTraffic"}

    def _sagemaker_DeleteInferenceComponent(self, p: dict) -> dict:
        self._component(p["InferenceComponentName"])["status"] = "Deleting"
        return {}

    def _sagemaker_ListInferenceComponents(self, p: dict) -> dict:
        on = p.get("EndpointNameEquals")
        return {"InferenceComponents": [
            {"InferenceComponentName": n, "EndpointName": c["endpoint"],
             "InferenceComponentArn": self.arn("inference-component", n),
             "EndpointArn": self.arn("endpoint", c["endpoint"]), "VariantName": "AllTraffic",
             "InferenceComponentStatus": c["status"], "CreationTime": _now(),
             "LastModifiedTime": _now()}
            for n, c in sorted(self.components.items()) if on in (None, c["endpoint"])]}

    # -- invocations: a short real-looking generation --

    def _sagemaker_runtime_InvokeEndpoint(self, p: dict) -> dict:
        self._endpoint(p["EndpointName"])
        body = json.loads(p["Body"])
        answer: dict = ({"choices": [{"index": 0, "finish_reason": "length",
                                      "message": {"role": "assistant", "content": " hello"}}]}
                        if "messages" in body else
                        {"generated_text": " hello", "details": {"generated_tokens": 2,
                                                                 "finish_reason": "length"}})
        return {"Body": _body(json.dumps(answer).encode()), "ContentType": "application/json"}

    def _sagemaker_runtime_InvokeEndpointWithResponseStream(self, p: dict) -> dict:
        self._endpoint(p["EndpointName"])
        body = json.loads(p["Body"])
        n = int((body.get("parameters") or {}).get("max_new_tokens")
                or body.get("max_tokens") or 4)
        if "messages" in body:
            lines = [{"choices": [{"index": 0, "delta": {"content": " x"}}]}] * n
        else:
            lines = [{"token": {"id": 1, "text": " x", "logprob": 0.0}}] * n
        parts = [{"PayloadPart": {"Bytes": json.dumps(line).encode() + b"\n"}}
                 for line in lines]
        return {"Body": parts, "ContentType": "application/jsonlines"}

    # -- S3 --

    def _put(self, bucket: str, key: str, body: bytes, metadata: dict) -> str:
        self._writes += 1
        etag = f'"{hashlib.md5(body + str(self._writes).encode()).hexdigest()}"'
        self.objects[(bucket, key)] = (body, etag, metadata)
        return etag

    def _object(self, p: dict) -> tuple[bytes, str, dict]:
        found = self.objects.get((p["Bucket"], p["Key"]))
        if found is None:
            raise _Fault("NoSuchKey", "The specified key does not exist.", 404)
        return found

    def _s3_GetObject(self, p: dict) -> dict:
        body, etag, meta = self._object(p)
        return {"Body": _body(body), "ETag": etag, "ContentLength": len(body),
                "Metadata": meta, "LastModified": _now()}

    def _s3_HeadObject(self, p: dict) -> dict:
        body, etag, meta = self._object(p)
        return {"ETag": etag, "ContentLength": len(body), "Metadata": meta,
                "LastModified": _now()}

    def _s3_PutObject(self, p: dict) -> dict:
        current = self.objects.get((p["Bucket"], p["Key"]))
        if p.get("IfNoneMatch") == "*" and current is not None:
            raise _Fault("PreconditionFailed", "At least one of the pre-conditions you "
                                               "specified did not hold", 412)
        if "IfMatch" in p and (current is None or current[1] != p["IfMatch"]):
            raise _Fault("PreconditionFailed", "At least one of the pre-conditions you "
                                               "specified did not hold", 412)
        body = p.get("Body", b"")
        if hasattr(body, "read"):
            body = body.read()
        body = body.encode() if isinstance(body, str) else bytes(body)
        return {"ETag": self._put(p["Bucket"], p["Key"], body, p.get("Metadata", {}))}

    def _s3_DeleteObject(self, p: dict) -> dict:
        current = self.objects.get((p["Bucket"], p["Key"]))
        if "IfMatch" in p and (current is None or current[1] != p["IfMatch"]):
            raise _Fault("PreconditionFailed", "At least one of the pre-conditions you "
                                               "specified did not hold", 412)
        self.objects.pop((p["Bucket"], p["Key"]), None)
        return {}

    def _s3_ListObjectsV2(self, p: dict) -> dict:
        prefix = p.get("Prefix", "")
        found = [{"Key": k, "Size": len(v[0]), "ETag": v[1], "LastModified": _now()}
                 for (b, k), v in sorted(self.objects.items())
                 if b == p["Bucket"] and k.startswith(prefix)]
        return {"Contents": found, "KeyCount": len(found), "IsTruncated": False}

    def _s3_ListMultipartUploads(self, p: dict) -> dict:
        return {"Uploads": [{k: u[k] for k in ("Key", "UploadId", "Initiated")}
                            for u in self.uploads if u["Bucket"] == p["Bucket"]
                            and u["Key"].startswith(p.get("Prefix", ""))],
                "IsTruncated": False}

    def _s3_AbortMultipartUpload(self, p: dict) -> dict:
        self.uploads = [u for u in self.uploads if u["UploadId"] != p["UploadId"]]
        return {}

    # -- Application Auto Scaling --

    def _application_autoscaling_DescribeScalableTargets(self, p: dict) -> dict:
        ids = p.get("ResourceIds") or list(self.scalable)
        return {"ScalableTargets": [self.scalable[i] for i in ids if i in self.scalable]}

    def _application_autoscaling_RegisterScalableTarget(self, p: dict) -> dict:
        self.scalable[p["ResourceId"]] = {**p, "RoleARN": "service-linked",
                                          "CreationTime": _now()}
        return {}

    def _application_autoscaling_PutScalingPolicy(self, p: dict) -> dict:
        return {"PolicyARN": f"arn:{self.partition}:autoscaling:{self.region}:{self.account}:"
                             f"scalingPolicy:{SHOWN_HASH}-xxxx-xxxx-xxxx-xxxxxxxxxxxx:resource/"
                             f"sagemaker/{p['ResourceId']}:policyName/{p['PolicyName']}"}

    def _application_autoscaling_DeleteScalingPolicy(self, p: dict) -> dict:
        return {}

    def _application_autoscaling_DeregisterScalableTarget(self, p: dict) -> dict:
        if self.scalable.pop(p["ResourceId"], None) is None:
            raise _Fault("ObjectNotFoundException", "No scalable target registered")
        return {}


@cache
def _boto_session() -> Any:
    """One boto3 session over the process's botocore session, which caches the service
    models it has read (megabytes of JSON); boto3 registers its client extensions on that
    session once, so it is made once."""
    import boto3

    from lmiflow.targets.aws_requests import botocore_session

    return boto3.Session(botocore_session=botocore_session())


def _body(data: bytes) -> Any:
    from botocore.response import StreamingBody

    return StreamingBody(io.BytesIO(data), len(data))


class RecordingSession:
    """A boto3 session whose clients answer from a FakeAccount and send nothing. Clients are
    made once per service and kept: the account behind them can be swapped per scenario."""

    def __init__(self, region: str, account: FakeAccount):
        self.region, self.account = region, account
        self._boto = _boto_session()
        self._clients: dict[str, Any] = {}

    def get_available_partitions(self) -> list[str]:
        return self._boto.get_available_partitions()

    def get_available_regions(self, service: str, partition: str = "aws") -> list[str]:
        return self._boto.get_available_regions(service, partition)

    def get_credentials(self) -> Any:
        from botocore.credentials import Credentials

        return Credentials("recording", "recording")

    def client(self, service: str, region_name: str | None = None, config: Any = None,
               **_: Any) -> Any:
        if service in self._clients:
            return self._clients[service]
        from botocore.awsrequest import AWSResponse

        c = self._boto.client(service, region_name=region_name or self.region, config=config,
                              endpoint_url=f"https://{service}.recording.invalid",
                              aws_access_key_id="recording", aws_secret_access_key="recording")

        def keep(params: dict, context: dict, **_: Any) -> None:
            # the API's own parameters; before-call sees only the serialised request
            context["lmiflow_params"] = dict(params)

        def answer(model: Any, context: dict, **_: Any) -> tuple[Any, dict]:
            try:
                out = self.account.answer(service, model.name, context["lmiflow_params"])
            except _Fault as f:
                return (AWSResponse(None, f.status, {}, None),
                        {"Error": {"Code": f.code, "Message": f.message},
                         "ResponseMetadata": {"HTTPStatusCode": f.status}})
            return AWSResponse(None, 200, {}, None), {
                **out, "ResponseMetadata": {"HTTPStatusCode": 200}}

        service_id = c.meta.service_model.service_id.hyphenize()
        c.meta.events.register(f"before-parameter-build.{service_id}", keep)
        c.meta.events.register(f"before-call.{service_id}", answer)
        self._clients[service] = c
        return c
