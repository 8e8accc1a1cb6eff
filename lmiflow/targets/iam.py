"""The IAM permissions a SageMaker run needs, generated from the run's own requests.

Why from the requests: the runner's policy then allows exactly the calls the run makes, on
the names it uses, and cannot drift from them: a request added to the run adds its
permission. Names are generalised where a later run of the same config uses other ones (the
candidate's spec hash, the Hub commit of staged weights), so one policy serves every run of
the config. The execution role's needs follow from the CreateModel request (its S3 prefixes,
its image, its VPC).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from lmiflow.targets.aws_requests import AwsRequest, error_code

POLICY_VERSION = "2012-10-17"
# IAM's prefix for each botocore service name, where the two differ.
IAM_PREFIX = {"sagemaker-runtime": "sagemaker", "service-quotas": "servicequotas"}
# S3 operations whose IAM action has another name.
S3_ACTIONS = {
    "HeadObject": "s3:GetObject", "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject", "CompleteMultipartUpload": "s3:PutObject",
    "ListObjectsV2": "s3:ListBucket", "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "ListParts": "s3:ListMultipartUploadParts",
}
# Actions that IAM cannot scope to a resource.
UNSCOPED = {"sagemaker:ListModels", "sagemaker:ListEndpointConfigs", "sagemaker:ListEndpoints",
            "sagemaker:ListInferenceComponents",
            "servicequotas:GetServiceQuota", "sts:GetCallerIdentity", "ecr:GetAuthorizationToken",
            "cloudwatch:PutMetricData"}
SAGEMAKER_RESOURCE = {"ModelName": "model", "EndpointConfigName": "endpoint-config",
                      "EndpointName": "endpoint", "InferenceComponentName": "inference-component"}
_CANDIDATE_HASH = re.compile(r"-(c|ec|m|ic)-[0-9a-fx]{8}(?=/|$)")
_COMMIT = re.compile(r"/[0-9a-f]{40}/")
# S3 operations that read an object: without s3:ListBucket on the bucket, S3 answers a read of
# a missing key 403 AccessDenied instead of 404 NoSuchKey (S3 API Reference, GetObject,
# "Permissions": https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html), and
# lmiflow reads "not there yet" from 404 (a first deploy's baseline, a first calibration store,
# a free lease).
S3_READS = ("GetObject", "HeadObject")


class Permission(NamedTuple):
    """One (action, resource) a request needs, and the request-context values IAM evaluates
    the policy's conditions on (iam:PassedToService, s3:prefix, iam:AWSServiceName): the
    policy is written from them, and the preflight simulates with them."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()


class Arns:
    """ARNs of the resources a request names. general: as the policy writes them (names a
    later run of the config uses instead become wildcards, objects their folder); else the
    exact resource, as the preflight simulates it."""

    def __init__(self, region: str, account: str, partition: str = "aws",
                 general: bool = True):
        self.region, self.account, self.partition = region, account, partition
        self.general = general

    def sagemaker(self, kind: str, name: str) -> str:
        # SageMaker ARNs carry names in lower case.
        name = generalise(name) if self.general else name
        return f"arn:{self.partition}:sagemaker:{self.region}:{self.account}:{kind}/{name.lower()}"

    def bucket(self, bucket: str) -> str:
        return f"arn:{self.partition}:s3:::{bucket}"

    def objects(self, bucket: str, key: str) -> str:
        """An object by its key; as the policy writes it, a key with a part a later run
        names otherwise (a hash, a commit) or a placeholder (a key known only then) by its
        folder, so the policy names no other object lmiflow does not touch."""
        if self.general and (generalise(key) != key or "<" in key):
            return f"arn:{self.partition}:s3:::{bucket}/{folder_of(generalise(key))}*"
        return f"arn:{self.partition}:s3:::{bucket}/{key}"

    def alarm(self, name: str) -> str:
        return f"arn:{self.partition}:cloudwatch:{self.region}:{self.account}:alarm:{name}"


def generalise(name: str) -> str:
    """Names a later run of the same config would use instead: any spec hash, any commit."""
    return _COMMIT.sub("/*/", _CANDIDATE_HASH.sub(r"-\1-*", name))


def folder_of(key: str) -> str:
    """An object's folder (ending in /), or the key itself at the bucket's root."""
    return key.rsplit("/", 1)[0] + "/" if "/" in key else key


def account_of(role_arn: str) -> tuple[str, str]:
    """(partition, account id) from an IAM role ARN."""
    parts = role_arn.split(":")
    return parts[1], parts[4]


def s3_action(operation: str) -> str:
    """The IAM action of an S3 operation."""
    return S3_ACTIONS.get(operation, f"s3:{operation}")


def permissions(req: AwsRequest, arns: Arns) -> list[Permission]:
    """The permissions one request needs."""
    p, op = req.params, req.operation
    prefix = IAM_PREFIX.get(req.service, req.service)
    if req.service == "s3":
        return _s3_permissions(req, arns)
    action = f"{prefix}:{op}"
    if action in UNSCOPED:
        return [Permission(action, "*")]
    if req.service in ("sagemaker", "sagemaker-runtime"):
        out: list[Permission] = []
        if "ResourceArn" in p:
            kind, _, name = p["ResourceArn"].rsplit(":", 1)[-1].partition("/")
            out.append(Permission(action, arns.sagemaker(kind, name)))
        for key, kind in SAGEMAKER_RESOURCE.items():
            if key in p:
                out.append(Permission(action, arns.sagemaker(kind, p[key])))
        if p.get("Tags"):  # tag-on-create needs AddTags on the new resource too
            out += [Permission("sagemaker:AddTags", x.resource) for x in list(out)]
        if "ExecutionRoleArn" in p:
            out.append(Permission("iam:PassRole", p["ExecutionRoleArn"],
                                  (("iam:PassedToService", "sagemaker.amazonaws.com"),)))
        alarms = ((p.get("DeploymentConfig") or {}).get("AutoRollbackConfiguration") or {}).get(
            "Alarms") or []
        out += [Permission("cloudwatch:DescribeAlarms", arns.alarm(a["AlarmName"]))
                for a in alarms]
        return out
    if req.service == "cloudwatch" and "AlarmNames" in p:
        return [Permission(action, arns.alarm(a)) for a in p["AlarmNames"]]
    if req.service == "cloudwatch" and "AlarmName" in p:
        return [Permission(action, arns.alarm(p["AlarmName"]))]
    if req.service == "application-autoscaling":
        return _autoscaling_permissions(req, arns)
    return [Permission(action, "*")]


def _s3_permissions(req: AwsRequest, arns: Arns) -> list[Permission]:
    p, action = req.params, s3_action(req.operation)
    if req.operation == "DeleteObjects":  # IAM authorizes s3:DeleteObject on each key
        return [Permission("s3:DeleteObject", arns.objects(p["Bucket"], o["Key"]))
                for o in p["Delete"]["Objects"]]
    if "Key" in p:
        out = [Permission(action, arns.objects(p["Bucket"], p["Key"]))]
        if req.operation in S3_READS:  # so that a missing key is a 404, not a 403
            out.append(Permission("s3:ListBucket", arns.bucket(p["Bucket"]),
                                  (("s3:prefix", folder_of(p["Key"])),)))
        return out
    context = ((("s3:prefix", p["Prefix"]),) if "Prefix" in p and action == "s3:ListBucket"
               else ())
    return [Permission(action, arns.bucket(p["Bucket"]), context)]


S3_DENIED = ("AccessDenied", "403", "Forbidden")


class PermissionDenied(PermissionError):
    """AWS refused a request for want of a permission; says which action on which resource,
    and what `lmiflow iam CONFIG` grants for it."""


def s3_denied(req: AwsRequest, exc: Exception) -> PermissionDenied | None:
    """The permission error an S3 request's 403 means (None for any other error). A read
    is named with s3:ListBucket too: without it S3 answers a missing key with 403, so the
    denial never reads as "not there yet" (S3 API Reference, GetObject, "Permissions")."""
    if req.service != "s3" or error_code(exc) not in S3_DENIED:
        return None
    p = req.params
    arns = Arns("", "", general=False)
    resource = arns.objects(p["Bucket"], p["Key"]) if "Key" in p else arns.bucket(p["Bucket"])
    also = (f" (and s3:ListBucket on {arns.bucket(p['Bucket'])}, without which S3 answers "
            "a missing key with 403)" if req.operation in S3_READS else "")
    return PermissionDenied(f"{s3_action(req.operation)} on {resource} denied ({error_code(exc)})"
                            f": the runner's policy must allow it{also}; `lmiflow iam CONFIG` "
                            "prints the policy")


@contextmanager
def s3_denied_under(prefix_uri: str) -> Iterator[None]:
    """For S3 calls boto3 makes itself (paginators, managed transfers), which lmiflow does
    not send one by one: a 403 under the prefix becomes the permission error naming the
    operation's action and the prefix."""
    try:
        yield
    except Exception as exc:
        operation = getattr(exc, "operation_name", "")
        bucket, _, key = prefix_uri.removeprefix("s3://").partition("/")
        params = {"Bucket": bucket, **({"Key": key + "*"} if operation not in (
            "ListObjectsV2", "ListMultipartUploads") else {})}
        denied = s3_denied(AwsRequest(service="s3", operation=operation or "GetObject",
                                      params=params), exc)
        if denied is None:
            raise
        raise denied from None


# Application Auto Scaling acts with the caller's permissions where it sets things up: the
# first RegisterScalableTarget of the account creates SageMaker's service-linked role, and a
# target-tracking policy creates and deletes its CloudWatch alarms (TargetTracking-<resource
# id>-AlarmHigh/Low-...). Scalable targets and policies have no ARN a caller knows in advance
# (Application Auto Scaling User Guide, security_iam_id-based-policy-examples and
# application-auto-scaling-service-linked-roles), so those actions take "*".
AUTOSCALING_SLR_SERVICE = "sagemaker.application-autoscaling.amazonaws.com"
AUTOSCALING_SLR = (f"role/aws-service-role/{AUTOSCALING_SLR_SERVICE}/"
                   "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")
ALARM_ACTIONS = {"PutScalingPolicy": ("cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms"),
                 "DeleteScalingPolicy": ("cloudwatch:DeleteAlarms",)}
# Registering a scalable target also checks that the caller may act on the target itself:
# "Permissions required for API actions on target services and CloudWatch", SageMaker row
# (https://docs.aws.amazon.com/autoscaling/application/userguide/
# security_iam_id-based-policy-examples.html#application-auto-scaling-additional-permissions).
TARGET_ACTIONS = {
    "endpoint": ("sagemaker:DescribeEndpoint", "sagemaker:UpdateEndpointWeightsAndCapacities"),
    "inference-component": ("sagemaker:DescribeInferenceComponent",
                            "sagemaker:UpdateInferenceComponentRuntimeConfig"),
}


def _autoscaling_permissions(req: AwsRequest, arns: Arns) -> list[Permission]:
    out = [Permission(f"application-autoscaling:{req.operation}", "*")]
    rid = str(req.params.get("ResourceId", ""))
    if req.operation == "RegisterScalableTarget":
        out.append(Permission("iam:CreateServiceLinkedRole",
                              f"arn:{arns.partition}:iam::{arns.account}:{AUTOSCALING_SLR}",
                              (("iam:AWSServiceName", AUTOSCALING_SLR_SERVICE),)))
        kind, _, rest = rid.partition("/")
        name = rest.split("/", 1)[0]
        out += [Permission(a, arns.sagemaker(kind, name)) for a in TARGET_ACTIONS.get(kind, ())]
    alarms = arns.alarm(f"TargetTracking-{rid}-*")
    out += [Permission(a, alarms) for a in ALARM_ACTIONS.get(req.operation, ())]
    return out


# How the policy states a request-context value: an S3 listing may name any prefix under the
# folders read (IfExists: a read's own check of s3:ListBucket, which decides 404 against 403,
# carries no s3:prefix, so the statement must hold without one); the others exactly.
CONDITION_OPERATOR = {"s3:prefix": "StringLikeIfExists"}


def _condition(context: set[tuple[str, str]]) -> dict[str, Any] | None:
    if not context:
        return None
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for key, value in sorted(context):
        if key == "s3:prefix":
            value = generalise(value) + "*"
        values = out[CONDITION_OPERATOR.get(key, "StringEquals")][key]
        if value not in values:
            values.append(value)
    # one exact value as a string (how IAM's own examples write it), any other a list
    return {op: {k: v[0] if op == "StringEquals" and len(v) == 1 else v
                 for k, v in keys.items()} for op, keys in out.items()}


def _statements(perms: list[Permission]) -> list[dict[str, Any]]:
    """One statement per (condition, set of actions), resources merged and sorted; the
    context values of one action on one resource merged into one condition."""
    contexts: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for action, resource, context in perms:
        contexts[(action, resource)] |= set(context)
    conds: dict[str, dict | None] = {}
    by_resource: dict[tuple[str, str], set[str]] = defaultdict(set)
    for (action, resource), context in contexts.items():
        cond = _condition(context)
        key = repr(cond)
        conds[key] = cond
        by_resource[(resource, key)].add(action)
    grouped: dict[tuple[tuple[str, ...], str], list[str]] = defaultdict(list)
    for (resource, key), actions in by_resource.items():
        grouped[(tuple(sorted(actions)), key)].append(resource)
    out = []
    for (actions, key), resources in sorted(grouped.items()):
        st: dict[str, Any] = {"Effect": "Allow", "Action": list(actions),
                              "Resource": sorted(set(resources))}
        if conds[key]:
            st["Condition"] = conds[key]
        out.append(st)
    for i, st in enumerate(out, 1):
        st["Sid"] = f"Lmiflow{i}"
    return out


def needed(requests: list[AwsRequest], region: str, role_arn: str, *, general: bool = True
           ) -> list[Permission]:
    """Every permission the requests need, in order, without repeats: on the names a later
    run uses too (general), or on exactly the resources these requests name."""
    partition, account = account_of(role_arn)
    arns = Arns(region, account, partition, general=general)
    return list(dict.fromkeys(x for r in requests for x in permissions(r, arns)))


def runner_policy(requests: list[AwsRequest], region: str, role_arn: str) -> dict[str, Any]:
    """The least-privilege policy for the identity that runs the flow."""
    return {"Version": POLICY_VERSION,
            "Statement": _statements(needed(requests, region, role_arn))}


def execution_role_policy(requests: list[AwsRequest], region: str, role_arn: str
                          ) -> dict[str, Any]:
    """What the execution role SageMaker assumes needs: read the model's S3 prefixes, pull the
    image from ECR, write the endpoint's logs and metrics, and (with a VPC) manage the network
    interfaces in it."""
    partition, account = account_of(role_arn)
    arns = Arns(region, account, partition)
    triples: list[Permission] = []
    for r in requests:
        alarms = ((r.params.get("DeploymentConfig") or {}).get("AutoRollbackConfiguration")
                  or {}).get("Alarms") or []
        # SageMaker reads the rollback alarms with the execution role during the update
        # (Developer Guide, deployment-guardrails-configuration.html)
        triples += [Permission("cloudwatch:DescribeAlarms", arns.alarm(a["AlarmName"]))
                    for a in alarms]
        if r.operation != "CreateModel":
            continue
        container = r.params.get("PrimaryContainer") or {}
        src = ((container.get("ModelDataSource") or {}).get("S3DataSource") or {}).get("S3Uri")
        if src:
            bucket, _, key = src.removeprefix("s3://").partition("/")
            triples.append(Permission("s3:GetObject", arns.objects(bucket, key)))
            triples.append(Permission("s3:ListBucket", arns.bucket(bucket),
                                      (("s3:prefix", key),)))
        image = container.get("Image", "")
        m = re.match(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com[.a-z]*/([^:@]+)", image)
        if m:
            repo = f"arn:{partition}:ecr:{m.group(2)}:{m.group(1)}:repository/{m.group(3)}"
            triples += [Permission(a, repo) for a in (
                "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                "ecr:GetDownloadUrlForLayer")]
            triples.append(Permission("ecr:GetAuthorizationToken", "*"))
        if r.params.get("VpcConfig"):
            triples += [Permission(f"ec2:{a}", "*") for a in (
                "CreateNetworkInterface", "CreateNetworkInterfacePermission",
                "DeleteNetworkInterface", "DeleteNetworkInterfacePermission",
                "DescribeNetworkInterfaces", "DescribeVpcs", "DescribeDhcpOptions",
                "DescribeSubnets", "DescribeSecurityGroups")]
    # the log group, and its streams: CreateLogStream and PutLogEvents take log-stream ARNs
    # (Service Authorization Reference, CloudWatch Logs)
    logs = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/*"
    triples += [Permission(f"logs:{a}", logs) for a in ("CreateLogGroup", "DescribeLogStreams")]
    triples += [Permission(f"logs:{a}", logs + ":log-stream:*")
                for a in ("CreateLogStream", "PutLogEvents")]
    triples.append(Permission("cloudwatch:PutMetricData", "*"))
    return {"Version": POLICY_VERSION, "Statement": _statements(triples)}


TRUST_POLICY = {
    "Version": POLICY_VERSION,
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}
