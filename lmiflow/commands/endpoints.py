"""`lmiflow endpoints list | invoke NAME PROMPT | delete NAME` on the local or SageMaker target."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmiflow.errors import UserInputError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "endpoints", help="List, invoke or delete endpoints on a target.",
        description="Endpoints on the local target (model servers on 127.0.0.1) or SageMaker.",
    )
    sub = p.add_subparsers(dest="action", required=True)

    def common(sp: Any) -> None:
        sp.add_argument("--target", choices=("local", "sagemaker"), default="local",
                        help="Where the endpoints live (default: local).")
        sp.add_argument("--region", help="AWS region (sagemaker; default: AWS_REGION).")
        sp.add_argument("--state-dir", help="Local target state dir (default: "
                        "LMIFLOW_STATE_DIR or the user state dir).")
        sp.add_argument("--s3-uri", help="sagemaker: the deploys' target.s3_uri, where the "
                        "endpoint's lease lives (delete takes it).")

    ls = sub.add_parser("list", help="Endpoints with status, config and URL.")
    common(ls)
    ls.add_argument("--json", action="store_true", help="One JSON array.")
    ls.add_argument("--prefix", default="", help="Only names starting with this.")

    inv = sub.add_parser("invoke", help="Send one prompt; print the generated text.")
    common(inv)
    inv.add_argument("name")
    inv.add_argument("prompt")
    inv.add_argument("--stream", action="store_true", help="Print tokens as they arrive.")
    inv.add_argument("--max-new-tokens", type=int, default=64)
    inv.add_argument("--raw", action="store_true", help="Print the response body as is.")

    rm = sub.add_parser("delete", help="Delete an endpoint and what only it used (its "
                        "autoscaling, endpoint config, model, staged files, and candidates "
                        "left by interrupted runs); stops its servers on local. Takes the "
                        "endpoint's lock: waits for a deploy of it in progress (local), or "
                        "refuses while another run holds it (SageMaker).")
    common(rm)
    rm.add_argument("name")
    rm.add_argument("--with-config-and-model", action="store_true",
                    help=argparse.SUPPRESS)  # what delete always does now; kept for scripts
    p.set_defaults(run=run)


def _target(args: Any) -> Any:
    from lmiflow.targets import configured_target

    try:
        target = configured_target(args.target, state_dir=args.state_dir, region=args.region,
                                   s3_uri=args.s3_uri)
    except ValueError as exc:
        raise UserInputError("--target", str(exc)) from None
    target.preflight(_needs(args))
    return target


def _needs(args: Any) -> list[tuple[str, str]]:
    """What the action will ask of the platform, for the target's preflight check."""
    if args.action == "list":
        return [("sagemaker:ListEndpoints", "*")]
    endpoint = f"arn:{{partition}}:sagemaker:{{region}}:{{account}}:endpoint/{args.name.lower()}"
    if args.action == "invoke":
        return [("sagemaker:DescribeEndpoint", endpoint),
                ("sagemaker:InvokeEndpoint" + ("WithResponseStream" if args.stream else ""),
                 endpoint)]
    # delete: first what finds where the endpoint's lease and files are (its tags); the
    # rest once that is known (target.delete_needs)
    return [("sagemaker:DescribeEndpoint", endpoint), ("sagemaker:ListTags", endpoint)]


def _require(target: Any, name: str) -> Any:
    st = target.describe(name)
    if st is None:
        raise UserInputError("NAME", f"no endpoint named {name!r} on target {target.kind}")
    return st


def _list(target: Any, args: Any) -> int:
    rows = [s for s in target.list_endpoints() if s.name.startswith(args.prefix)]
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in rows], indent=2))
        return 0
    if not rows:
        print("no endpoints")
        return 0
    header = ("NAME", "STATUS", "CONFIG", "URL")
    table = [header] + [(s.name, s.status, s.config_name or "-", s.url or "-") for s in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for s in rows:
        if s.failure_reason:
            print(f"{s.name}: {s.failure_reason}")
    return 0


def _invoke(target: Any, args: Any) -> int:
    if args.max_new_tokens < 1:
        raise UserInputError("--max-new-tokens", "must be at least 1")
    _require(target, args.name)
    payload = {"inputs": args.prompt, "parameters": {"max_new_tokens": args.max_new_tokens}}
    try:
        if not args.stream:
            body = target.invoke(args.name, payload)
            if args.raw:
                print(body.decode("utf-8", "replace"))
                return 0
            try:
                print(json.loads(body)["generated_text"])
            except (ValueError, KeyError, TypeError):
                print(body.decode("utf-8", "replace"))
            return 0
        for line in target.invoke_stream(args.name, {**payload, "stream": True}):
            if args.raw:
                print(line.decode("utf-8", "replace"), flush=True)
                continue
            obj = json.loads(line)
            details = obj.get("details") or {}
            if details.get("finish_reason") == "error":
                print(f"\nlmiflow: error: stream ended with an error: {obj.get('error')}",
                      file=sys.stderr)
                return 1
            sys.stdout.write((obj.get("token") or {}).get("text", ""))
            sys.stdout.flush()
        print()
        return 0
    except LookupError:  # deleted since we looked
        raise UserInputError("NAME", f"no endpoint named {args.name!r}") from None
    except Exception as exc:  # the endpoint's own error: report it, exit 1 (not a usage error)
        print(f"lmiflow: error: invoking {args.name}: {exc}", file=sys.stderr)
        return 1


def _delete(target: Any, args: Any) -> int:
    """Under the endpoint's lock, as a deploy holds it: a deploy running meanwhile would
    otherwise find production gone and create it again, its regression checks skipped (no
    production to compare with). What only this endpoint used goes with it (teardown):
    nothing is left that no command could remove later."""
    from lmiflow import lifecycle
    from lmiflow.targets.base import EndpointBusy

    try:  # where the deploys keep the lock and files: as the endpoint records it
        warning = target.adopt_store(args.name)
    except ValueError as exc:
        raise UserInputError("--s3-uri", str(exc)) from None
    if warning:
        print(f"lmiflow: warning: {warning}", file=sys.stderr)
    target.preflight(target.delete_needs(args.name))  # now that the S3 prefix is known
    print(f"taking the lock of endpoint {args.name} (a deploy of it in progress finishes "
          "first)", file=sys.stderr)
    kept: list[str] = []
    try:
        with target.endpoint_lock(args.name, "lmiflow endpoints delete"):
            if target.describe(args.name) is None:
                raise UserInputError("NAME", f"no endpoint named {args.name!r} on target "
                                             f"{target.kind}")
            removed = lifecycle.teardown(target, args.name, kept)
    except EndpointBusy as exc:
        raise UserInputError("NAME", f"{exc}: wait for that run to end, then delete") from None
    for what in removed:
        print(f"deleted {what}")
    for what in kept:
        print(f"kept {what}")
    return 0


def run(args: Any) -> int:
    target = _target(args)
    if args.action == "list":
        return _list(target, args)
    if args.action == "invoke":
        return _invoke(target, args)
    return _delete(target, args)
