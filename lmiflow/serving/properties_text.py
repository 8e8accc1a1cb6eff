"""Java-properties-style text of serving.properties, as DJL Serving reads it.

Hand-written because the format DJL uses is a plain `key=value` per line with `#` comments;
no library on PyPI round-trips it without pulling in a Java-properties dialect (escapes,
line continuations) that DJL's own files never use and that would let a value smuggle a key.
"""

from __future__ import annotations

from lmiflow import patterns


def check_entry(key: str, value: str) -> None:
    """Reject what could inject a line or a key into the file."""
    if not patterns.matches(patterns.PROPERTY_KEY, key):
        raise ValueError(f"key {key!r}: only letters, digits, '_', '.', '-' (no '=', spaces)")
    if patterns.has_control(value):
        raise ValueError(f"value of {key}: line breaks and control characters are not allowed")


def render_entries(entries: dict[str, str]) -> str:
    for k, v in entries.items():
        check_entry(k, v)
    return "".join(f"{k}={v}\n" for k, v in entries.items())


def parse_entries(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"line {n}: expected key=value, got {raw!r}")
        key, value = key.strip(), value.strip()
        check_entry(key, value)
        out[key] = value
    return out
