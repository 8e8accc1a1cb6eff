"""Scrub secrets from anything lmiflow writes or logs (reports, artifacts, error messages).

Two layers, because a secret can arrive either way:
- by key: a dict value under a key that names a secret (``hf_token``, ``aws_secret_access_key``,
  ``password``, ``credentials``...) is replaced;
- by shape: any string holding something that looks like an HF token, an AWS access key id, a
  ``name=value`` pair whose name is a secret, or a bearer token is rewritten, wherever it sits
  (an error message, a log line, serving.properties text).

Key matching works on the key's words so that metric names that merely mention tokens
(``output_tokens_per_s``, ``max_new_tokens``, ``tokenizer``) survive; and only string values
(or strings inside containers) under a secret key are replaced, because a count such as
``kv_cache_bytes_per_token: 131072`` is data, not a secret.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# Words that make a key secret on their own, and word pairs that do so together.
_SECRET_WORDS = frozenset(
    {"secret", "secrets", "token", "password", "passwd", "credential", "credentials", "apikey"}
)
_SECRET_PAIRS = frozenset(
    {("access", "key"), ("session", "key"), ("api", "key"), ("private", "key")}
)

# Split snake_case, kebab-case, dotted and camelCase keys into lower-case words.
_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

# A secret-looking name, then = or :, then the value (optionally quoted). The name must *end*
# with the secret word (HF_TOKEN, aws_secret_access_key, option.hf_token) so that
# ``max_new_tokens=128`` or ``tokenizer=...`` are left alone.
_ASSIGN_RE = re.compile(
    r"""(?ix)
    (?P<name>\b[\w.-]*?
        (?:secret|password|passwd|token|credentials?|access_key|session_key|secret_key
           |api_key|apikey|private_key)
    )\b
    (?P<sep>["']?\s*[:=]\s*["']?)
    (?P<value>[^\s"',;&}]+)
    """
)
_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face user access token
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id (long-term / temporary)
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]+=*"),  # Authorization: Bearer <token>
)


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    words = [w.lower() for w in _WORD_RE.findall(key)]
    # The secret word must end the key (hf_token, aws_session_token): token_count_mismatches
    # or secret_scanner_enabled name data, not secrets.
    if words and words[-1] in _SECRET_WORDS:
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def redact_text(text: str) -> str:
    """Return ``text`` with every secret-shaped substring replaced by ``***``."""
    if not text:
        return text
    out = _ASSIGN_RE.sub(lambda m: f"{m.group('name')}{m.group('sep')}{MASK}", text)
    for pattern in _PATTERNS:
        out = pattern.sub(MASK, out)
    return out


def _mask_all(obj: Any) -> Any:
    """Everything textual under a secret key goes; numbers, booleans and None stay."""
    if isinstance(obj, (str, bytes)):
        return MASK
    if isinstance(obj, Mapping):
        return {k: _mask_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_mask_all(v) for v in obj]
    return obj


def redact(obj: Any) -> Any:
    """Return a redacted deep copy of ``obj`` (dicts, lists, tuples, strings); never mutates it."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        return {k: _mask_all(v) if is_secret_key(k) else redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj
