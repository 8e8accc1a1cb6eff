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
from typing import Any

from lmiflow.targets.aws_requests import AwsRequest

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
            "servicequotas:GetServiceQuota", "sts:GetCallerIdentity", "ecr:GetAuthorizationToken",
            "cloudwatch:PutMetricData"}
SAGEMAKER_RESOURCE = {"ModelName": "model", "EndpointConfigName": "endpoint-config",
                      "EndpointName": "endpoint", "InferenceComponentName": "inference-component"}
_CANDIDATE_HASH = re.compile(r"-(c|ec|m|ic)-[0-9a-fx]{8}(?=/|$)")
_COMMIT = re.compile(r"/[0-9a-f]{40}/")


class Arns:
    def __init__(self, region: str, account: str, partition: str = "aws"):
        self.region, self.account, self.partition = region, account, partition

    def sagemaker(self, kind: str, name: str) -> str:
        # SageMaker ARNs carry names in lower case.
        return (f"arn:{self.partition}:sagemaker:{self.region}:{self.account}:"
                f"{kind}/{generalise(name).lower()}")

    def bucket(self, bucket: str) -> str:
        return f"arn:{self.partition}:s3:::{bucket}"

    def objects(self, bucket: str, key: str) -> str:
        return f"arn:{self.partition}:s3:::{bucket}/{folder_of(generalise(key))}*"

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


def _permissions(req: AwsRequest, arns: Arns) -> list[tuple[str, str, dict | None]]:
    """(action, resource, condition) triples one request needs."""
    p, op = req.params, req.operation
    prefix = IAM_PREFIX.get(req.service, req.service)
    out: list[tuple[str, str, dict | None]] = []
    if req.service == "s3":
        action = S3_ACTIONS.get(op, f"s3:{op}")
        if "Key" in p:
            out.append((action, arns.objects(p["Bucket"], p["Key"]), None))
        else:
            cond = ({"StringLike": {"s3:prefix": [generalise(p["Prefix"]) + "*"]}}
                    if "Prefix" in p and action == "s3:ListBucket" else None)
            out.append((action, arns.bucket(p["Bucket"]), cond))
        return out
    action = f"{prefix}:{op}"
    if action in UNSCOPED:
        return [(action, "*", None)]
    if req.service in ("sagemaker", "sagemaker-runtime"):
        if "ResourceArn" in p:
            kind, _, name = p["ResourceArn"].rsplit(":", 1)[-1].partition("/")
            out.append((action, arns.sagemaker(kind, name), None))
        for key, kind in SAGEMAKER_RESOURCE.items():
            if key in p:
                out.append((action, arns.sagemaker(kind, p[key]), None))
        if p.get("Tags"):  # tag-on-create needs AddTags on the new resource too
            out += [("sagemaker:AddTags", r, None) for _, r, _ in list(out)]
        if "ExecutionRoleArn" in p:
            out.append(("iam:PassRole", p["ExecutionRoleArn"],
                        {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}))
        alarms = ((p.get("DeploymentConfig") or {}).get("AutoRollbackConfiguration") or {}).get(
            "Alarms") or []
        out += [("cloudwatch:DescribeAlarms", arns.alarm(a["AlarmName"]), None) for a in alarms]
        return out
    if req.service == "cloudwatch" and "AlarmNames" in p:
        return [(action, arns.alarm(a), None) for a in p["AlarmNames"]]
    if req.service == "cloudwatch" and "AlarmName" in p:
        return [(action, arns.alarm(p["AlarmName"]), None)]
    if req.service == "application-autoscaling":
        return _autoscaling_permissions(req, arns)
    return [(action, "*", None)]


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


def _autoscaling_permissions(req: AwsRequest, arns: Arns
                             ) -> list[tuple[str, str, dict | None]]:
    out: list[tuple[str, str, dict | None]] = [
        (f"application-autoscaling:{req.operation}", "*", None)]
    if req.operation == "RegisterScalableTarget":
        out.append(("iam:CreateServiceLinkedRole",
                    f"arn:{arns.partition}:iam::{arns.account}:{AUTOSCALING_SLR}",
                    {"StringEquals": {"iam:AWSServiceName": AUTOSCALING_SLR_SERVICE}}))
    alarms = arns.alarm(f"TargetTracking-{req.params.get('ResourceId', '')}-*")
    out += [(a, alarms, None) for a in ALARM_ACTIONS.get(req.operation, ())]
    return out


def _statements(triples: list[tuple[str, str, dict | None]]) -> list[dict[str, Any]]:
    """One statement per (condition, set of actions), resources merged and sorted."""
    by_resource: dict[tuple[str, str], set[str]] = defaultdict(set)
    for action, resource, cond in triples:
        key = repr(sorted(cond.items())) if cond else ""
        by_resource[(resource, key)].add(action)
    conds = {repr(sorted(c.items())) if c else "": c for _, _, c in triples}
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


def runner_policy(requests: list[AwsRequest], region: str, role_arn: str) -> dict[str, Any]:
    """The least-privilege policy for the identity that runs the flow."""
    partition, account = account_of(role_arn)
    arns = Arns(region, account, partition)
    triples = [t for r in requests for t in _permissions(r, arns)]
    return {"Version": POLICY_VERSION, "Statement": _statements(triples)}


def execution_role_policy(requests: list[AwsRequest], region: str, role_arn: str
                          ) -> dict[str, Any]:
    """What the execution role SageMaker assumes needs: read the model's S3 prefixes, pull the
    image from ECR, write the endpoint's logs and metrics, and (with a VPC) manage the network
    interfaces in it."""
    partition, account = account_of(role_arn)
    arns = Arns(region, account, partition)
    triples: list[tuple[str, str, dict | None]] = []
    for r in requests:
        alarms = ((r.params.get("DeploymentConfig") or {}).get("AutoRollbackConfiguration")
                  or {}).get("Alarms") or []
        # SageMaker reads the rollback alarms with the execution role during the update
        # (Developer Guide, deployment-guardrails-configuration.html)
        triples += [("cloudwatch:DescribeAlarms", arns.alarm(a["AlarmName"]), None)
                    for a in alarms]
        if r.operation != "CreateModel":
            continue
        container = r.params.get("PrimaryContainer") or {}
        src = ((container.get("ModelDataSource") or {}).get("S3DataSource") or {}).get("S3Uri")
        if src:
            bucket, _, key = src.removeprefix("s3://").partition("/")
            triples.append(("s3:GetObject", arns.objects(bucket, key), None))
            triples.append(("s3:ListBucket", arns.bucket(bucket),
                            {"StringLike": {"s3:prefix": [generalise(key) + "*"]}}))
        image = container.get("Image", "")
        m = re.match(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com[.a-z]*/([^:@]+)", image)
        if m:
            repo = f"arn:{partition}:ecr:{m.group(2)}:{m.group(1)}:repository/{m.group(3)}"
            triples += [(a, repo, None) for a in (
                "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                "ecr:GetDownloadUrlForLayer")]
            triples.append(("ecr:GetAuthorizationToken", "*", None))
        if r.params.get("VpcConfig"):
            triples += [(f"ec2:{a}", "*", None) for a in (
                "CreateNetworkInterface", "CreateNetworkInterfacePermission",
                "DeleteNetworkInterface", "DeleteNetworkInterfacePermission",
                "DescribeNetworkInterfaces", "DescribeVpcs", "DescribeDhcpOptions",
                "DescribeSubnets", "DescribeSecurityGroups")]
    logs = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/*"
    triples += [(f"logs:{a}", logs, None) for a in (
        "CreateLogGroup", "CreateLogStream", "DescribeLogStreams", "PutLogEvents")]
    triples.append(("cloudwatch:PutMetricData", "*", None))
    return {"Version": POLICY_VERSION, "Statement": _statements(triples)}


TRUST_POLICY = {
    "Version": POLICY_VERSION,
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}
