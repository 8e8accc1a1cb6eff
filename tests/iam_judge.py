"""An IAM judge for tests, independent of lmiflow's own code: a small reading of IAM's
evaluation rules for identity policies of Allow statements (action and resource wildcards,
the String condition operators and their IfExists forms), and an IAM client whose
SimulatePrincipalPolicy answers from it, as IAM's policy simulator would.

The rules it follows (IAM User Guide, reference_policies_elements_condition_operators and
reference_policies_evaluation-logic): a statement applies when the action and the resource
match one of its patterns (`*` any run of characters, `?` one) and every condition holds; a
condition on a key the request does not carry does not hold, unless its operator ends in
IfExists; nothing allowed is an implicit deny. The simulator (API SimulatePrincipalPolicy)
takes the request's context keys as ContextEntries; a key the policy's condition reads but the
caller did not pass makes the decision implicitDeny."""

from __future__ import annotations

import fnmatch
from typing import Any

ACCOUNT = "123456789012"
RUNNER = f"arn:aws:iam::{ACCOUNT}:user/lmiflow-runner"


def _matches(pattern: str, value: str, *, case: bool = True) -> bool:
    if not case:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern)


def _condition_holds(op: str, key: str, want: Any, context: dict[str, str]) -> bool:
    if_exists = op.endswith("IfExists")
    op = op.removesuffix("IfExists")
    got = context.get(key)
    wants = want if isinstance(want, list) else [want]
    if got is None:
        return if_exists
    if op == "StringEquals":
        return got in wants
    if op == "StringLike":
        return any(_matches(w, got) for w in wants)
    return False  # an operator this judge does not know never holds: it fails loudly


def allowed(policy: dict, action: str, resource: str, context: dict | None = None) -> bool:
    """Whether the policy allows the action on the resource, in a request with context."""
    context = context or {}
    for st in policy["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if st["Effect"] != "Allow":
            continue
        if not any(_matches(a, action, case=False) for a in actions):  # actions: any case
            continue
        if not any(_matches(p, resource) for p in resources):
            continue
        if all(_condition_holds(op, key, want, context)
               for op, conds in st.get("Condition", {}).items()
               for key, want in conds.items()):
            return True
    return False


def simulating_session(policy: dict, caller: str = RUNNER):
    """A boto3 session whose STS says the caller is `caller` and whose IAM policy simulator
    judges `policy` (the caller's only policy). Every request is still checked by botocore
    against the service model before it is answered; nothing leaves the process."""
    import boto3
    from botocore.awsrequest import AWSResponse

    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")
    seen: list[dict] = []

    def keep(params, context, **_):
        context["judge_params"] = dict(params)

    def answer(model, context, **_):
        p = context.get("judge_params", {})
        if model.name == "GetCallerIdentity":
            parsed = {"UserId": "AIDAEXAMPLE", "Account": ACCOUNT, "Arn": caller}
        elif model.name == "SimulatePrincipalPolicy":
            seen.append(p)
            ctx = {e["ContextKeyName"]: e["ContextKeyValues"][0]
                   for e in p.get("ContextEntries", [])}
            (resource,) = p.get("ResourceArns") or ["*"]
            parsed = {"IsTruncated": False, "EvaluationResults": [
                {"EvalActionName": a, "EvalResourceName": resource,
                 "EvalDecision": "allowed" if allowed(policy, a, resource, ctx)
                 else "implicitDeny"} for a in p["ActionNames"]]}
        else:
            return None
        parsed["ResponseMetadata"] = {"HTTPStatusCode": 200}
        return AWSResponse("https://judge", 200, {}, None), parsed

    for service in ("sts", "iam"):
        session.events.register(f"before-parameter-build.{service}", keep)
        session.events.register(f"before-call.{service}", answer)
    session.simulated = seen  # type: ignore[attr-defined]
    return session
