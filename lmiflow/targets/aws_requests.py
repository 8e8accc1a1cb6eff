"""AWS requests as data: what lmiflow sends, checked against botocore's service model before it
is sent, and shown to the user (`deploy --dry-run`, report.json `requests`) with secrets masked.

Why data first: a user must be able to read every request before anything is created, and the
object shown is the object sent, so the list cannot drift from what runs. botocore's
ParamValidator checks members, types and minimums; AWS checks maximum lengths, patterns and
enums only on its side, after earlier requests already created things. Both are checked here,
so a bad name or an oversized environment value fails at plan time.

`guard(client)` applies the same check to every request a boto3 client makes, including the
ones boto3's managed transfers build themselves (multipart uploads), so nothing bypasses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict

from lmiflow.redact import MASK, is_secret_key, redact_text


class InvalidRequest(ValueError):
    """A request that botocore's service model rejects: a bug or bad input, found before any
    request is sent."""


class AwsRequest(BaseModel):
    """One AWS API call: botocore's service and operation names and the exact parameters.
    `step` is the pipeline step that sends it; `when` says when a planned request is sent if
    not exactly once (a condition, or a repetition such as polling)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str
    operation: str
    params: dict[str, Any]
    step: str | None = None
    when: str | None = None

    def shown(self) -> dict[str, Any]:
        """The report's form: secrets masked; step and when only where they say something."""
        out: dict[str, Any] = {"service": self.service, "operation": self.operation,
                               "params": masked(self)}
        if self.step:
            out["step"] = self.step
        if self.when:
            out["when"] = self.when
        return out


# ---- the service model ----------------------------------------------------------------------


@cache
def botocore_session():
    """One botocore session per process for reading service models (it caches them)."""
    import botocore.session

    return botocore.session.get_session()


@cache
def operation_model(service: str, operation: str):
    """botocore's model of one operation; loading needs no credentials and no network."""
    try:
        model = botocore_session().get_service_model(service)
    except Exception:
        raise InvalidRequest(f"{service}: not an AWS service botocore knows") from None
    if operation not in model.operation_names:
        raise InvalidRequest(f"{service} {operation}: not an operation of {service}")
    return model.operation_model(operation)


def method_name(operation: str) -> str:
    """boto3's method for an operation (CreateEndpointConfig -> create_endpoint_config)."""
    from botocore import xform_name

    return xform_name(operation)


def validate(req: AwsRequest) -> None:
    """Raise InvalidRequest (one line, secrets masked) unless the request is valid for the
    service model: botocore's ParamValidator, then the maximums, patterns and enums."""
    from botocore.validate import ParamValidator

    shape = operation_model(req.service, req.operation).input_shape
    report = ParamValidator().validate(req.params, shape)
    problems = report.generate_report().splitlines() if report.has_errors() else []
    if not problems and shape is not None:
        problems = _limits(shape, req.params, "")
    if problems:
        raise InvalidRequest(_hide(f"{req.service} {req.operation}: {problems[0]}", req.params))


def validate_all(reqs: Iterable[AwsRequest]) -> list[AwsRequest]:
    out = list(reqs)
    for r in out:
        validate(r)
    return out


def error_code(exc: Exception) -> str:
    """The AWS error code of a botocore ClientError (else its HTTP status; "" for other
    exceptions): what retries, leases and preflight decide on."""
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error", {})
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(err.get("Code") or status or "")


def aws_error(exc: Exception) -> tuple[str, str]:
    """(code, message) of a botocore ClientError ("", "" for other exceptions)."""
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error", {})
    return str(err.get("Code", "")), str(err.get("Message", ""))


def is_missing(exc: Exception) -> bool:
    """SageMaker's answer for a resource that does not exist (a ValidationException)."""
    code, msg = aws_error(exc)
    return code in ("ValidationException", "ValidationError") and "Could not find" in msg


def is_existing(exc: Exception) -> bool:
    """SageMaker's answer for a name already taken (a ValidationException)."""
    code, msg = aws_error(exc)
    return code in ("ValidationException", "ValidationError") and "already exist" in msg


def request(service: str, operation: str, **params: Any) -> AwsRequest:
    return AwsRequest(service=service, operation=operation, params=params)


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, key prefix ending in / or empty) of an s3:// URI."""
    from lmiflow import patterns

    m = patterns.S3_URI.fullmatch(uri) if isinstance(uri, str) else None
    if not m:
        raise ValueError(f"target.s3_uri: {uri!r} is not s3://bucket/prefix/")
    prefix = m.group("key") or ""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return m.group("bucket"), prefix


def send(client: Any, req: AwsRequest) -> Any:
    """Validate, then make the call with the client of req.service."""
    validate(req)
    return getattr(client, method_name(req.operation))(**req.params)


def guard(client: Any, on_request: Callable[[AwsRequest], None] | None = None) -> Any:
    """Check every request this client makes (also those boto3's transfer manager builds)
    before it is sent; on_request sees each one (tests record them). Returns the client."""
    service = client.meta.service_model.service_name

    def check(params: dict, model: Any, **_: Any) -> None:
        req = AwsRequest(service=service, operation=model.name, params=dict(params))
        problems = _limits(model.input_shape, req.params, "") if model.input_shape else []
        if problems:
            raise InvalidRequest(_hide(f"{service} {model.name}: {problems[0]}", req.params))
        if on_request is not None:
            on_request(req)

    # The first event of a call, before any other handler (Stubber's included) sees the
    # parameters; botocore's own ParamValidator runs later, when the request is serialised.
    event = f"provide-client-params.{client.meta.service_model.service_id.hyphenize()}"
    client.meta.events.register(event, check, unique_id=f"lmiflow-guard-{id(client)}")
    return client


# ---- masking --------------------------------------------------------------------------------


def masked(req: AwsRequest) -> dict[str, Any]:
    """The parameters with every secret replaced by the fixed mask: members the service model
    marks sensitive, and values under a key that names a secret (an HF_TOKEN environment
    variable). A text body (JSON, serving.properties) is shown as text, other bytes by size."""
    shape = operation_model(req.service, req.operation).input_shape
    return _mask(req.params, shape)


def _mask(value: Any, shape: Any, key: str | None = None) -> Any:
    if shape is not None and shape.metadata.get("sensitive"):
        return MASK
    if key is not None and is_secret_key(key) and isinstance(value, str):
        return MASK
    if isinstance(value, bytes | bytearray):  # a text body as its text, anything else by size
        try:
            return redact_text(bytes(value).decode("utf-8"))
        except UnicodeDecodeError:
            return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        t = getattr(shape, "type_name", None)
        if t == "structure":
            return {k: _mask(v, shape.members.get(k), k) for k, v in value.items()}
        inner = shape.value if t == "map" else None
        return {k: _mask(v, inner, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        inner = shape.member if getattr(shape, "type_name", None) == "list" else None
        return [_mask(v, inner) for v in value]
    if hasattr(value, "read"):
        return "<stream>"
    return value


def _secret_values(value: Any, key: str | None = None) -> list[str]:
    if isinstance(value, str):
        return [value] if key is not None and is_secret_key(key) and value else []
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in _secret_values(v, k)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _secret_values(v, key)]
    return []


def _hide(message: str, params: dict) -> str:
    for secret in _secret_values(params):
        message = message.replace(secret, MASK)
    return redact_text(message)


# ---- what ParamValidator leaves to AWS ------------------------------------------------------


@cache
def _pattern(java_regex: str) -> re.Pattern | None:
    """AWS patterns are Java regexes; \\p{L}-style classes need the `regex` module, else they
    map to `re` supersets. A pattern neither can read is not checked (AWS still checks it)."""
    try:
        import regex

        return regex.compile(java_regex)
    except ImportError:
        py = (java_regex.replace(r"\p{L}", r"\w").replace(r"\p{N}", r"\d")
              .replace(r"\p{Z}", r"\s"))
        try:
            return re.compile(py)
        except re.error:
            return None
    except Exception:
        return None


def _limits(shape: Any, value: Any, path: str) -> list[str]:
    md, t, out = shape.metadata, shape.type_name, []
    where = path.lstrip(".") or shape.name
    if t == "structure" and isinstance(value, Mapping):
        for k, v in value.items():
            if k in shape.members:
                out += _limits(shape.members[k], v, f"{path}.{k}")
    elif t in ("list", "map") and isinstance(value, list | tuple | Mapping):
        lo, hi = md.get("min", 0), md.get("max")
        if len(value) < lo or (hi is not None and len(value) > hi):
            out.append(f"{where}: {len(value)} items, the API allows {lo}-{hi}")
        if t == "list":
            for i, v in enumerate(value):
                out += _limits(shape.member, v, f"{path}[{i}]")
        else:
            for k, v in value.items():
                out += _limits(shape.key, k, f"{path}<key {k}>")
                out += _limits(shape.value, v, f"{path}.{k}")
    elif t == "string" and isinstance(value, str):
        hi = md.get("max")
        if hi is not None and len(value) > hi:
            out.append(f"{where}: {len(value)} characters, the API allows at most {hi}")
        if "enum" in md and value not in md["enum"]:
            out.append(f"{where}: {value!r} is not one of {', '.join(md['enum'])}")
        pat = md.get("pattern")
        compiled = _pattern(pat) if pat else None
        if compiled is not None and compiled.fullmatch(value) is None:
            out.append(f"{where}: {value!r} does not match the API's pattern {pat}")
    elif t in ("integer", "long", "float", "double") and isinstance(value, int | float):
        hi = md.get("max")
        if hi is not None and value > hi:
            out.append(f"{where}: {value} is above the API's maximum {hi}")
    return out


# ---- the compact view -----------------------------------------------------------------------

_NAME_KEYS = ("InferenceComponentName", "EndpointName", "EndpointConfigName", "ModelName",
              "ResourceId", "AlarmName", "EndpointNameEquals")


def compact_line(req: AwsRequest, width: int = 80) -> str:
    """One line: service, operation and what it acts on (the full request is in --json)."""
    p = req.params
    if req.service == "s3":
        what = f"s3://{p.get('Bucket', '')}/{p.get('Key', p.get('Prefix', ''))}"
    elif "ResourceArn" in p:
        what = str(p["ResourceArn"]).rsplit(":", 1)[-1]
    elif "ResourceId" in p or "ResourceIds" in p:
        what = str(p.get("ResourceId") or p["ResourceIds"][0])
    elif "NameContains" in p:
        what = f"{p['NameContains']}*"
    else:
        what = next((str(p[k]) for k in _NAME_KEYS if k in p), "")
    if req.operation == "CreateEndpointConfig":
        v = (p.get("ProductionVariants") or [{}])[0]
        what += f" {v.get('InstanceType')} x{v.get('InitialInstanceCount')}"
        managed = v.get("ManagedInstanceScaling")
        if managed:
            what += f" (managed {managed['MinInstanceCount']}-{managed['MaxInstanceCount']})"
    if req.operation in ("CreateInferenceComponent", "UpdateInferenceComponent"):
        need = (p.get("Specification") or {}).get("ComputeResourceRequirements") or {}
        what += (f" {need.get('NumberOfAcceleratorDevicesRequired', 0):g} acc "
                 f"{need.get('MinMemoryRequiredInMb')} MiB")
        if "RuntimeConfig" in p:
            what += f" x{p['RuntimeConfig']['CopyCount']}"
    if req.operation == "RegisterScalableTarget":
        what += f" {p.get('MinCapacity')}..{p.get('MaxCapacity')}"
    if req.operation == "PutScalingPolicy":
        what = f"{p.get('PolicyName')} {p.get('PolicyType')}"
        tt = p.get("TargetTrackingScalingPolicyConfiguration")
        if tt:
            what += f" target {tt.get('TargetValue', 0):g}"
    if req.operation == "UpdateEndpoint" and p.get("RetainAllVariantProperties"):
        what += " (count retained)"
    if req.operation == "CreateModel" and p.get("EnableNetworkIsolation"):
        what += " (no network)"
    line = f"{req.service} {req.operation} {what}".rstrip()
    return line if len(line) <= width else line[: width - 1] + "…"


def compact(reqs: Iterable[AwsRequest], width: int = 80) -> list[str]:
    """The numbered list --dry-run prints, grouped under the step that sends each request."""
    lines: list[str] = []
    step = None
    for i, r in enumerate(reqs, 1):
        if r.step != step:
            step = r.step
            lines.append(f"{step or 'other'}:")
        lines.append(f"{i:>3}. " + compact_line(r, width - 5))
        if r.when:
            lines.append(f"       ({r.when})"[:width])
    return lines
