"""Scrub secrets from anything lmiflow writes or logs (reports, artifacts, error messages).

What lmiflow knows to be secret it masks for certain, wherever it appears:
- by value: every secret lmiflow resolves or reads (a config's secret options, HF_TOKEN and the
  AWS keys of the environment) is registered here, and any registered value is replaced in
  any text or structure that passes through, whatever key or sentence holds it;
- by type: a pydantic `SecretStr` is masked (and dumps as `**********` already).

Two heuristic layers catch secrets lmiflow was never told about:
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

import contextlib
import itertools
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pydantic import SecretBytes, SecretStr

MASK = "***"
# Shorter values are not registered: masking every "1" or "on" would garble reports, and a
# secret that short is not one.
MIN_SECRET_LEN = 6
# Environment variables whose values are credentials wherever they are set.
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY",
                   "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "PREFECT_API_KEY")

_registered: set[str] = set()
_registered_re: re.Pattern[str] | None = None
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """From now on, mask `value` wherever it appears in this process's output."""
    global _registered_re
    if not isinstance(value, str) or len(value) < MIN_SECRET_LEN or value in _registered:
        return
    with _lock:
        _registered.add(value)
        # Longest first, so a secret that contains another is masked whole.
        alts = sorted(_registered, key=len, reverse=True)
        _registered_re = re.compile("|".join(re.escape(v) for v in alts))


def register_environment(environ: Mapping[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    for name in SECRET_ENV_VARS:
        register_secret(env.get(name))


def registered_secrets() -> Iterable[str]:
    return tuple(_registered)


def _mask_registered(text: str) -> str:
    pattern = _registered_re
    return pattern.sub(MASK, text) if pattern is not None else text


# A registered value this long in a plain config field is a credential there, not chance: the
# shortest real ones (AWS secret keys, Hub tokens) are 37-40 characters. Shorter registered
# values (moto's "testing") are still masked in output, but do not make a config invalid.
REFUSE_MIN_LEN = 12


def registered_in(obj: Any, path: str = "") -> str | None:
    """The dotted path of the first string in obj (dicts, lists) that holds a registered
    secret of at least REFUSE_MIN_LEN characters, whatever its shape; None when none does."""
    if isinstance(obj, str):
        pattern = _registered_re
        found = pattern.findall(obj) if pattern is not None else []
        return path if any(len(v) >= REFUSE_MIN_LEN for v in found) else None
    items = (obj.items() if isinstance(obj, Mapping)
             else enumerate(obj) if isinstance(obj, list | tuple) else ())
    for key, value in items:
        where = registered_in(value, f"{path}.{key}" if path else str(key))
        if where is not None:
            return where
    return None


class _MaskedStream:
    """A text stream that masks registered secrets in each write. A secret is masked when it
    sits whole in one write (print() writes each argument whole)."""

    def __init__(self, inner: Any):
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(_mask_registered(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def masked_output() -> Iterator[None]:
    """stdout and stderr of this process mask every registered secret while inside: the one
    place everything a command prints passes, whichever module prints it."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _MaskedStream(saved[0]), _MaskedStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved

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
    out = _mask_registered(text)
    out = _ASSIGN_RE.sub(lambda m: f"{m.group('name')}{m.group('sep')}{MASK}", out)
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
    if isinstance(obj, SecretStr | SecretBytes):
        return MASK
    if isinstance(obj, Mapping):
        return {k: _mask_all(v) if is_secret_key(k) else redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


class _RedactingFactory:
    """A log record factory that masks registered secrets in every record of every logger
    (Prefect's API log handler included) before any handler formats or ships it."""

    def __init__(self, inner: Callable[..., logging.LogRecord]):
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        if _registered_re is None:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logging module's to report
            return record
        masked = _mask_registered(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if _mask_registered(text) != text:
                record.exc_text = _mask_registered(text)
        return record


def install_log_redaction() -> None:
    """Mask registered secrets in all log records of this process (idempotent)."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))


def looks_secret(key: str, value: object) -> bool:
    """A plain config entry that is probably a credential: its key names one, or its value has
    a credential's shape. Used to refuse such entries outside their typed home."""
    words = [w.lower() for w in _WORD_RE.findall(key)]
    if is_secret_key(key) or (words and words[-1] in _GUARD_WORDS):
        return True
    return isinstance(value, str) and any(p.search(value) for p in _PATTERNS)


# Refusing a plain entry costs one exit 2 that points at the right place, so this guard may
# guess wider than redaction (where a false positive would hide data).
_GUARD_WORDS = frozenset({"creds", "cred", "pwd", "passphrase", "key", "keys"})
