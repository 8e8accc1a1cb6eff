"""The text shapes lmiflow accepts (names, keys, ARNs, URIs), and the one way to check them.

Every pattern is matched with `re.fullmatch`, never `match` with `^...$`: `$` also matches
before a final newline, so `"abc\\n"` passed a `^...$` name check and a newline reached
serving.properties or an S3 key. The patterns carry no anchors, so a caller cannot get this
wrong by choosing `match`. A leaf module (no lmiflow imports) so every layer can use it.
"""

from __future__ import annotations

import re

# SageMaker's rule for model, endpoint-config and endpoint names (botocore EndpointName).
NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
# botocore RoleArn, with the role name's own length limit.
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
# s3://bucket[/prefix]: bucket naming rules, a prefix without whitespace or control characters.
S3_URI = re.compile(
    r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>[^\s\x00-\x1f\x7f]*))?"
)
SUBNET_ID = re.compile(r"subnet-[0-9a-f]{8,17}")
SECURITY_GROUP_ID = re.compile(r"sg-[0-9a-f]{8,17}")
# A container image reference: registry[:port]/repository[:tag][@sha256:digest]
# (botocore's ContainerImage only says "no whitespace, at most 255").
IMAGE_URI = re.compile(
    r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)+"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?"
)
IMAGE_URI_MAX = 255
# A serving.properties key (Java-properties text DJL reads): no '=', ':', spaces or breaks.
PROPERTY_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
# Container environment variable names (botocore EnvironmentKey).
ENV_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Tag keys and values (botocore TagKey/TagValue, ASCII subset).
TAG_TEXT = re.compile(r"[\w.:/=+\-@ ]*")
# A relative file path inside a model directory or prefix (no '..' is checked separately).
REL_PATH = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")
# A Prefect block document name (a slug).
BLOCK_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]{0,95}/[\w.\-]{1,96}")
REVISION = re.compile(r"[A-Za-z0-9_.\-/]+")
MODULE_NAME = re.compile(r"[A-Za-z0-9_.\-/]+")
LOWER_NAME = re.compile(r"[a-z0-9_]+")
UPPER_NAME = re.compile(r"[A-Z0-9_]+")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def matches(pattern: re.Pattern[str], value: object) -> bool:
    """True when `value` is a string that `pattern` matches in full."""
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def require(pattern: re.Pattern[str], value: object, reason: str) -> str:
    """`value` when it matches `pattern` in full, else ValueError(reason)."""
    if not matches(pattern, value):
        raise ValueError(reason)
    return value  # type: ignore[return-value]


def has_control(text: str) -> bool:
    """Line breaks, NUL and other control characters: never in a name, key or value."""
    return CONTROL.search(text) is not None
