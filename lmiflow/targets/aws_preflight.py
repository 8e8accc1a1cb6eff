"""Before a SageMaker command creates or changes anything: can these credentials act in this
region at all? Without this check a missing or expired credential surfaces 60 lines deep at the
first create call, after a model or an S3 object already exists.

Three checks, in order, each a line of its own when it fails:
- region: SageMaker is offered there (botocore's endpoint data; no call);
- identity: credentials are found and STS accepts them (GetCallerIdentity, which needs no
  permission);
- permissions: IAM SimulatePrincipalPolicy for the (action, resource) pairs the command needs.
  Simulation is the dry probe AWS offers (SageMaker has no DryRun flag); where the caller may not
  simulate, a read-only SageMaker call (ListEndpoints, one result) shows SageMaker is reachable
  with these credentials, and the create permissions stay unchecked (said in a note).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmiflow.errors import UserInputError
from lmiflow.targets.aws_requests import error_code

# (IAM action, resource ARN or "*"[, request context]); the ARN may hold {partition}, {region}
# and {account}, filled in from the caller's identity (a command knows the endpoint's name, not
# the account). The context is ((key, value), ...): what the request tells IAM, such as
# iam:PassedToService for iam:PassRole, which a policy's condition reads; simulated without
# it, a condition on it never holds (IAM's simulator answers implicitDeny, listing the key in
# MissingContextValues).
Need = tuple[str, str] | tuple[str, str, tuple[tuple[str, str], ...]]
_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")
_BAD_CREDENTIALS = ("InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
                    "ExpiredTokenException", "UnrecognizedClientException",
                    "InvalidAccessKeyId", "AuthFailure")
_ASSUMED_ROLE = re.compile(r"^arn:([\w-]+):sts::(\d{12}):assumed-role/([^/]+)/")


class AccessProblem(UserInputError):
    """The target cannot be used as configured: one line per failed check, exit 2."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(problems[0][0], problems[0][1])

    def __str__(self) -> str:
        return "\n".join(f"{what}: {why}" for what, why in self.problems)


@dataclass
class Access:
    """Who the credentials are, and what could not be checked."""

    arn: str
    account: str
    notes: list[str] = field(default_factory=list)


def _code(exc: Exception) -> str:
    return error_code(exc) or type(exc).__name__


def _first_line(exc: Exception, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3].rsplit(" ", 1)[0] + "..."


def check_region(region: str | None, available: Iterable[str]) -> str | None:
    """Why the region cannot be used (None when it can)."""
    if not region:
        return "none set: give target.region (or --region) or set AWS_REGION"
    if region not in set(available):
        return f"{region!r} is not a region where SageMaker is offered"
    return None


Client = Callable[..., Any]  # (service, config=None) -> a boto3 client in the region


def caller_identity(session: Any, region: str, client: Client
                    ) -> tuple[Access | None, str | None]:
    """(who, None) or (None, why not), from STS GetCallerIdentity in the region."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        if session.get_credentials() is None:
            raise NoCredentialsError()
        from botocore.config import Config

        # A quick answer: this check runs before every command, and the network may be down.
        quick = Config(region_name=region, connect_timeout=5, read_timeout=10,
                       retries={"total_max_attempts": 2}, user_agent_extra="lmiflow")
        sts = client("sts", quick)
        out = sts.get_caller_identity()
    except NoCredentialsError:
        return None, ("no credentials found (environment, AWS_PROFILE, ~/.aws, "
                      "target.aws_credentials_block or an instance role)")
    except ClientError as exc:
        code = _code(exc)
        if code in _BAD_CREDENTIALS:
            return None, f"STS rejected the credentials ({code}: {_first_line(exc)})"
        return None, f"STS GetCallerIdentity failed ({code}: {_first_line(exc)})"
    except BotoCoreError as exc:  # no network, profile missing, SSO token expired, ...
        return None, f"cannot confirm the credentials: {_first_line(exc)}"
    return Access(arn=out["Arn"], account=out["Account"]), None


def principal_arn(caller_arn: str) -> str | None:
    """The IAM principal whose policies apply: an assumed role's role (path unknown: IAM then
    answers NoSuchEntity, and the check falls back to the probe), a user as is; None for the
    root user, whom no policy limits."""
    m = _ASSUMED_ROLE.match(caller_arn)
    if m:
        return f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}"
    if caller_arn.endswith(":root"):
        return None
    return caller_arn


def simulate(iam: Any, principal: str, needs: Sequence[Need]) -> list[str]:
    """The actions IAM's simulator denies the principal, with the resource each was asked for.
    One simulation per resource and request context. Raises the client's error when the
    caller may not simulate."""
    groups: dict[tuple[str, tuple], list[str]] = defaultdict(list)
    for need in needs:
        action, resource = need[0], need[1]
        context = tuple(need[2]) if len(need) > 2 else ()  # type: ignore[misc]
        if action not in groups[(resource, context)]:
            groups[(resource, context)].append(action)
    denied: list[str] = []
    for (resource, context), actions in groups.items():
        extra = {"ContextEntries": [
            {"ContextKeyName": k, "ContextKeyValues": [v], "ContextKeyType": "string"}
            for k, v in context]} if context else {}
        pages = iam.get_paginator("simulate_principal_policy").paginate(
            PolicySourceArn=principal, ActionNames=actions, ResourceArns=[resource], **extra)
        for page in pages:
            for result in page["EvaluationResults"]:
                if result["EvalDecision"] != "allowed":
                    where = "" if resource == "*" else f" on {resource}"
                    denied.append(f"{result['EvalActionName']}{where}")
    return list(dict.fromkeys(denied))


def check_permissions(client: Client, region: str, access: Access, needs: Sequence[Need]
                      ) -> str | None:
    """Why the credentials may not do what the command needs (None when they may, or when only
    the read-only probe could run and it passed: then access.notes says so)."""
    from botocore.exceptions import BotoCoreError, ClientError

    principal = principal_arn(access.arn)
    if needs and principal is not None:
        where = {"partition": access.arn.split(":")[1], "region": region,
                 "account": access.account}
        needs = [(n[0], n[1].format(**where), *n[2:]) for n in needs]  # type: ignore[misc]
        try:
            denied = simulate(client("iam"), principal, needs)
        except Exception as exc:  # not allowed to simulate, or a stand-in without IAM
            access.notes.append(f"permissions not simulated ({_code(exc)}); SageMaker probed "
                                "with ListEndpoints instead")
        else:
            if denied:
                return f"{access.arn} may not call " + ", ".join(denied)
            return None
    try:
        client("sagemaker").list_endpoints(MaxResults=1)
    except ClientError as exc:
        code = _code(exc)
        if code in _DENIED:
            return f"{access.arn} may not call sagemaker:ListEndpoints ({code})"
        return f"SageMaker ListEndpoints failed ({code}: {_first_line(exc)})"
    except BotoCoreError as exc:
        return f"cannot reach SageMaker in {region}: {_first_line(exc)}"
    return None


def check_access(session: Any, region: str | None, needs: Sequence[Need] = (),
                 available_regions: Iterable[str] | None = None,
                 client: Client | None = None) -> Access:
    """Region, identity, permissions; raises AccessProblem naming each failed check.
    client(service, config=None): how to make a client (the target's validated ones);
    default: the session's, in the region."""
    if available_regions is None:
        available_regions = {r for part in session.get_available_partitions()
                             for r in session.get_available_regions("sagemaker", part)}
    why = check_region(region, available_regions)
    if why:
        raise AccessProblem([("target.region", why)])
    if client is None:
        def client(service: str, config: Any = None) -> Any:
            return session.client(service, region_name=region, config=config)
    access, why = caller_identity(session, region, client)
    if access is None:
        raise AccessProblem([("AWS identity", why)])
    why = check_permissions(client, region, access, needs)
    if why:
        raise AccessProblem([("AWS permissions", why)])
    return access
