"""huggingface_hub's import-time settings, made to follow the environment test by test.

huggingface_hub.constants reads HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME, the cache paths, the
token path and the timeouts once, when it is first imported, and its module-level HfApi keeps
the endpoint of that moment. A test that sets HF_ENDPOINT to its Hub stand-in after that import
is ignored by huggingface_hub (and so by transformers): the calls go to whatever the
environment said at import, for instance an earlier test's stand-in, stopped since, whose
refused connections huggingface_hub then retries with backoff (four minutes, once).

`sync()` recomputes every setting from the environment as it is now, by running the module's
own source again into a scratch module (so nothing is hand-copied from huggingface_hub and a new
setting in a later release is covered too), and sets what differs on the real module.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# The variables constants.py reads (directly, or through XDG_CACHE_HOME and the telemetry
# opt-outs): a change in any of them means the settings must be recomputed.
_PREFIXES = ("HF_", "HUGGINGFACE", "TRANSFORMERS_", "XDG_CACHE_HOME", "DO_NOT_TRACK",
             "DISABLE_TELEMETRY", "OAUTH_", "OPENID_", "CLAUDE_CONFIG_DIR")
_last: tuple | None = None
_computed: dict[str, object] = {}


def _env_key() -> tuple:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_PREFIXES)))


def settings_from_env() -> dict[str, object]:
    """What huggingface_hub.constants would hold if it were imported now."""
    global _last, _computed
    key = _env_key()
    if key != _last:
        from huggingface_hub import constants

        spec = importlib.util.spec_from_file_location("_hf_constants_now", constants.__file__)
        scratch = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(scratch)
        _computed = {k: v for k, v in vars(scratch).items() if k.isupper()}
        _last = key
    return _computed


def sync(monkeypatch=None) -> None:
    """Set huggingface_hub's settings from the environment (through monkeypatch when given, so
    they are undone with it). Nothing to do while huggingface_hub is not imported: its import
    will read the environment of that moment."""
    if "huggingface_hub.constants" not in sys.modules:
        return
    constants = sys.modules["huggingface_hub.constants"]
    setattr_ = monkeypatch.setattr if monkeypatch is not None else setattr
    for name, value in settings_from_env().items():
        if getattr(constants, name, object()) != value:
            setattr_(constants, name, value)
    hf_api = sys.modules.get("huggingface_hub.hf_api")
    api = getattr(hf_api, "api", None)
    if api is not None and api.endpoint != constants.ENDPOINT:  # huggingface_hub.model_info &c.
        setattr_(api, "endpoint", constants.ENDPOINT)


def point_at(monkeypatch, url: str) -> None:
    """huggingface_hub (and transformers through it) talks to the Hub at `url` until the
    monkeypatch is undone."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    sync(monkeypatch)
