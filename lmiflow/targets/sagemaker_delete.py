"""What `endpoints delete` removes from S3 besides the endpoint (a mixin of
targets.sagemaker): the serving.properties folders of its models, the staged weights only its
models used, production's baseline; and where the endpoint's deploys keep all that (its
lmiflow:s3-uri tag), so that delete takes their lease without being told.

Why so careful: a staged weights prefix is one per model revision, shared by every config and
endpoint of that revision under the same target.s3_uri, and a deploy of another endpoint may
be about to create a model on it. So a prefix goes only when no remaining SageMaker model
reads from it and no other endpoint's deploy holds a lease in the prefix. The runs' reports
stay: they are the audit trail of what was deployed and why.

Every request is an AwsRequest sent through the target (validated against botocore's model);
listings are paginated; objects go in DeleteObjects batches of at most 1,000 keys (S3 API
Reference, DeleteObjects: "up to 1,000 keys").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from lmiflow import patterns
from lmiflow.targets.aws_requests import AwsRequest, is_missing, request, split_s3
from lmiflow.targets.sagemaker_requests import BASELINE_FILE

logger = logging.getLogger("lmiflow.targets.sagemaker")

STORE_TAG = "lmiflow:s3-uri"
DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1,000 keys per request
WEIGHTS_FOLDER = "weights/"
LEASES_FOLDER = "leases/"


def same_store(a: str, b: str) -> bool:
    """Two target.s3_uri values name the same prefix (a trailing / or not)."""
    return split_s3(a) == split_s3(b)


def store_tags(s3_uri: str | None) -> dict[str, str]:
    """The tag that records where an endpoint's lease and files live, when the URI fits
    SageMaker's tag values (TagValue: up to 256 of letters, digits, spaces and _.:/=+-@,
    botocore's sagemaker model); otherwise none, and delete needs --s3-uri."""
    if not s3_uri:
        return {}
    if len(s3_uri) > 256 or not patterns.matches(patterns.TAG_TEXT, s3_uri):
        logger.warning("target.s3_uri %r cannot be a SageMaker tag value: endpoints delete "
                       "will need --s3-uri to find the endpoint's lease and files", s3_uri)
        return {}
    return {STORE_TAG: s3_uri}


def data_uris(model: dict) -> set[str]:
    """Every S3 location a DescribeModel answer reads model data from."""
    out: set[str] = set()
    for c in [model.get("PrimaryContainer") or {}, *(model.get("Containers") or [])]:
        sources = [c.get("ModelDataSource") or {}, *(c.get("AdditionalModelDataSources") or [])]
        out |= {s["S3DataSource"]["S3Uri"] for s in sources if s.get("S3DataSource")}
        if c.get("ModelDataUrl"):
            out.add(c["ModelDataUrl"])
    return out


def overlaps(uri: str, prefix: str) -> bool:
    """A model reading `uri` reads objects under `prefix` (one holds the other)."""
    return uri.startswith(prefix) or prefix.startswith(uri)


def delete_objects_requests(bucket: str, keys: Sequence[str]) -> list[AwsRequest]:
    """DeleteObjects in batches of at most 1,000 keys; Quiet: S3 answers only the errors."""
    return [request("s3", "DeleteObjects", Bucket=bucket, Delete={
        "Objects": [{"Key": k} for k in keys[i:i + DELETE_BATCH]], "Quiet": True})
        for i in range(0, len(keys), DELETE_BATCH)]


PLACEHOLDER_HASH = "x" * 8  # a spec hash delete learns only from the listings
PLACEHOLDER_ARN = "arn:aws:sagemaker:<region>:<account>:endpoint/"


def delete_requests(endpoint: str, s3_uri: str | None, account_arn: str,
                    *, components: bool = False, scaling: bool = True) -> list[AwsRequest]:
    """Every kind of request `endpoints delete` sends (pure), one per kind and resource, on
    placeholder names where the listings supply them ("*": each of those found): what its
    policy is written from and its preflight checks (targets.iam). account_arn: the endpoint
    ARN's leading part, arn:<partition>:sagemaker:<region>:<account>:endpoint/. components:
    the target runs inference components (each on the endpoint goes first; they carry the
    names of the configs that placed them, unknown here). scaling: the endpoint's own
    autoscaling, which delete looks for and removes only when it may."""
    from lmiflow.targets import components_plan as cp
    from lmiflow.targets.autoscaling_plan import describe_targets_request, removal_requests
    from lmiflow.targets.base import Target
    from lmiflow.targets.s3_lease import lease_delete_request, lease_put_request
    from lmiflow.targets.sagemaker_requests import VARIANT_NAME, lease_key

    names = Target.resource_names(endpoint, PLACEHOLDER_HASH)
    sm = "sagemaker"
    _, partition, _, _, account, _ = account_arn.split(":", 5)
    caller = f"arn:{partition}:iam::{account}:role/<the caller's role>"
    out = [request("sts", "GetCallerIdentity"),  # the preflight (targets.aws_preflight)
           request("iam", "SimulatePrincipalPolicy", PolicySourceArn=caller, ActionNames=[]),
           request(sm, "ListEndpoints", MaxResults=1),
           request(sm, "DescribeEndpoint", EndpointName=endpoint),
           request(sm, "ListTags", ResourceArn=account_arn + endpoint.lower()),
           request(sm, "DescribeEndpointConfig", EndpointConfigName=names["endpoint_config"]),
           *(request(sm, op, NameContains=f"{endpoint}-") for op in (
               "ListModels", "ListEndpointConfigs", "ListEndpoints")),
           request(sm, "DescribeModel", ModelName=names["model"]),
           *([describe_targets_request(endpoint, VARIANT_NAME),
              *removal_requests(endpoint, VARIANT_NAME)] if scaling else []),
           *([cp.list_components_request(endpoint), *cp.unscale_requests("*"),
              cp.delete_component_request("*"), cp.describe_component_request("*")]
             if components else []),
           *(request(sm, "DeleteEndpoint", EndpointName=n)
             for n in (endpoint, names["endpoint"])),
           request(sm, "DeleteEndpointConfig", EndpointConfigName=names["endpoint_config"]),
           request(sm, "DeleteModel", ModelName=names["model"])]
    if not s3_uri:
        return out
    bucket, prefix = split_s3(s3_uri)
    key, etag = lease_key(prefix, endpoint), '"<ETag of the lease>"'
    take = [lease_put_request(bucket, key, b"<lease>", IfNoneMatch="*"),
            request("s3", "GetObject", Bucket=bucket, Key=key),  # held: by whom, expired?
            lease_put_request(bucket, key, b"<lease>", IfMatch=etag)]
    release = [lease_delete_request(bucket, key, etag)]
    weights = prefix + WEIGHTS_FOLDER  # each staged prefix under it: <repo>/<commit>/
    files = f"{prefix}{names['model']}/"
    out = [*take, *out]
    out += [request("s3", "ListObjectsV2", Bucket=bucket, Prefix=p) for p in (
        files[:-len(PLACEHOLDER_HASH) - 1], weights, prefix + LEASES_FOLDER,
        f"{prefix}{endpoint}/")]
    # which remaining model still reads the weights: every model of the account, described
    out += [request(sm, "ListModels"), request(sm, "DescribeModel", ModelName="*")]
    out += delete_objects_requests(bucket, [files + "serving.properties", weights + "<file>",
                                            f"{prefix}{endpoint}/{BASELINE_FILE}"])
    return out + release


class StagedFilesOps:
    """For SageMakerTarget (which holds s3_uri, send, _pages, describe)."""

    # -- where the endpoint's lease and files live --

    def resource_tags(self) -> dict[str, str]:
        return store_tags(self.s3_uri)

    def adopt_store(self, endpoint: str) -> str | None:
        st = self.describe(endpoint)
        if st is None:
            return None  # nothing to delete: the caller says so
        recorded = st.tags.get(STORE_TAG)
        if recorded and self.s3_uri and not same_store(recorded, self.s3_uri):
            raise ValueError(f"endpoint {endpoint} was deployed with target.s3_uri "
                             f"{recorded} (its {STORE_TAG} tag), not {self.s3_uri}")
        if recorded:
            self.s3_uri = recorded
            return None
        if self.s3_uri:
            return None
        return (f"endpoint {endpoint} records no {STORE_TAG} tag (deployed before lmiflow "
                "tagged it): not locked against a deploy on another machine, and its staged "
                "S3 files are left; pass --s3-uri (the deploys' target.s3_uri) to lock it "
                "and remove them")

    def delete_needs(self, endpoint: str) -> list[tuple]:
        """What delete_requests need, for the preflight: resources in the form
        aws_preflight fills in ({partition}, {region}, {account}); the endpoint's autoscaling
        left out, since remove_autoscaling goes on when it may not look."""
        from lmiflow.targets.iam import needed

        reqs = delete_requests(endpoint, self.s3_uri,
                               "arn:{partition}:sagemaker:{region}:{account}:endpoint/",
                               components=self.mode == "inference_component", scaling=False)
        return needed(reqs, "{region}", "arn:{partition}:iam::{account}:role/x",
                      general=False)

    def delete_policy(self, endpoint: str) -> dict | None:
        """The policy of whoever deletes the endpoint (`endpoints delete`): written from
        delete_requests as the runner's is from the run's. Not the runner's: a deploy never
        deletes production, so its identity may not."""
        if not self.role_arn:
            return None
        from lmiflow.targets.iam import account_of, runner_policy

        partition, account = account_of(self.role_arn)
        reqs = delete_requests(endpoint, self.s3_uri,
                               f"arn:{partition}:sagemaker:{self.region}:{account}:endpoint/",
                               components=self.mode == "inference_component")
        return runner_policy(reqs, self.region, self.role_arn)

    # -- before the models go: what they read --

    def files_of(self, endpoint: str, models: Sequence[str]) -> list[str]:
        return sorted({u for name in models for u in self.model_uris(name)})

    def model_uris(self, name: str) -> set[str]:
        """Where the model reads its data (none when it is gone already)."""
        try:
            return data_uris(self.send(request("sagemaker", "DescribeModel", ModelName=name)))
        except Exception as exc:
            if not is_missing(exc):
                raise
        return set()

    # -- after the models went: remove what nothing uses any more --

    def remove_files(self, endpoint: str, used: Sequence[str]) -> tuple[list[str], list[str]]:
        if not self.s3_uri:
            return [], ([f"S3 files of {endpoint}: where they are is unknown (no --s3-uri, "
                         f"no {STORE_TAG} tag)"] if used else [])
        bucket, prefix = split_s3(self.s3_uri)
        removed: list[str] = []
        kept: list[str] = []
        remaining = _Remaining(self)
        stem = self.resource_names(endpoint, "0" * 8)["model"][:-8]  # <endpoint>-m-
        folders = self._grouped(bucket, prefix + stem)
        for folder, keys in sorted(folders.items()):
            name = folder[len(prefix):-1]
            if (not re.fullmatch(re.escape(stem) + "[0-9a-f]{8}", name)
                    or folder + "serving.properties" not in keys):
                continue  # not a folder lmiflow staged for one of this endpoint's models
            if name in remaining.names():
                kept.append(f"s3://{bucket}/{folder}: model {name} still exists")
                continue
            removed.append(self._drop(bucket, folder, keys, "serving.properties folder"))
        weights = f"s3://{bucket}/{prefix}{WEIGHTS_FOLDER}"
        staged = sorted({u for u in used if u.startswith(weights) and u.endswith("/")})
        running: list[str] | None = None  # other endpoints' leases, listed once if asked
        for uri in staged:
            users = remaining.users_of(uri)
            if users:
                kept.append(f"staged weights {uri}: still read by model "
                            + ", ".join(users[:3]) + (" and others" if len(users) > 3 else ""))
                continue
            if running is None:
                running = self._other_leases(bucket, prefix, endpoint)
            if running:
                kept.append(f"staged weights {uri}: a deploy of {running[0]} may be about to "
                            "use them (its lease is held); delete them later by hand")
                continue
            _, key = split_s3(uri)
            keys = [k for keys in self._grouped(bucket, key).values() for k in keys]
            if keys:
                removed.append(self._drop(bucket, key, keys, "staged weights"))
        own = f"{prefix}{endpoint}/"
        baseline = own + BASELINE_FILE
        found = self._grouped(bucket, own)
        keys = [k for ks in found.values() for k in ks]
        if baseline in keys:  # production's benchmark: a new endpoint of this name must not
            removed.append(self._drop(bucket, baseline, [baseline], "baseline"))  # meet it
        reports = [k for k in keys if k.startswith(own + "reports/")]
        if reports:
            runs = {k[len(own + "reports/"):].split("/", 1)[0] for k in reports}
            kept.append(f"s3://{bucket}/{own}reports/ ({len(runs)} run(s)' reports): the audit "
                        "trail of what was deployed and why; remove by hand if unwanted")
        return removed, kept

    def _grouped(self, bucket: str, key_prefix: str) -> dict[str, list[str]]:
        """The objects under key_prefix by their first folder below the listing's parent
        (<prefix><folder>/), one paginated ListObjectsV2."""
        parent = key_prefix.rsplit("/", 1)[0] + "/" if "/" in key_prefix else ""
        out: dict[str, list[str]] = {}
        for page in self._pages(request("s3", "ListObjectsV2", Bucket=bucket,
                                        Prefix=key_prefix)):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(parent):]
                folder = parent + rest.split("/", 1)[0] + ("/" if "/" in rest else "")
                out.setdefault(folder, []).append(obj["Key"])
        return out

    def _drop(self, bucket: str, where: str, keys: list[str], what: str) -> str:
        for req in delete_objects_requests(bucket, sorted(keys)):
            errors = self.send(req).get("Errors") or []
            if errors:
                e = errors[0]
                raise PermissionError(
                    f"s3:DeleteObject on s3://{bucket}/{e.get('Key')} failed ({e.get('Code')}: "
                    f"{e.get('Message')}); {len(errors)} object(s) of {what} not deleted")
        logger.info("deleted %s s3://%s/%s (%d objects)", what, bucket, where, len(keys))
        return f"{what} s3://{bucket}/{where} ({len(keys)} object(s))"

    def _other_leases(self, bucket: str, prefix: str, endpoint: str) -> list[str]:
        """Endpoints whose deploy holds a lease in this prefix now (ours excepted)."""
        leases = [k for keys in self._grouped(bucket, prefix + LEASES_FOLDER).values()
                  for k in keys]
        names = [k[len(prefix + LEASES_FOLDER):].removesuffix(".json") for k in leases]
        return sorted(n for n in names if n != endpoint.lower())


class _Remaining:
    """The SageMaker models left in the account and region, and what each reads, asked once
    (ListModels, then DescribeModel per model), only when a question needs them."""

    def __init__(self, target: StagedFilesOps):
        self.target = target
        self._names: list[str] | None = None
        self._uris: dict[str, set[str]] | None = None

    def names(self) -> list[str]:
        if self._names is None:
            self._names = [m["ModelName"] for page in self.target._pages(
                request("sagemaker", "ListModels")) for m in page.get("Models", [])]
        return self._names

    def users_of(self, prefix: str) -> list[str]:
        if self._uris is None:
            self._uris = {n: self.target.model_uris(n) for n in self.names()}
        return sorted(n for n, uris in self._uris.items()
                      if any(overlaps(u, prefix) for u in uris))
