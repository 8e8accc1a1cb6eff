"""Where a model's config.json comes from: a local path, the Hugging Face Hub, or a bundled
snapshot in configs/models/ when the Hub cannot be reached. The one I/O edge of sizing."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import BaseModel

from lmiflow import patterns
from lmiflow.errors import UserInputError
from lmiflow.sizing.model_spec import (
    ModelConfigError,
    ModelSpec,
    parse_model_config,
    read_config_file,
    with_exact_counts,
)

log = logging.getLogger(__name__)

SNAPSHOTS = Path(__file__).resolve().parents[1] / "configs" / "models"


class ResolvedModel(BaseModel):
    spec: ModelSpec
    source: str  # "local:<path>", "hub:<id>@<rev>", "snapshot:<dir>"
    local_dir: str | None = None
    note: str | None = None


def _snapshot_for(model_id: str) -> Path | None:
    if not SNAPSHOTS.is_dir():
        return None
    for d in sorted(SNAPSHOTS.iterdir()):
        meta = d / "source.json"
        if meta.is_file():
            hub_id = json.loads(meta.read_text()).get("hub_id", "")
            if hub_id.lower() == model_id.lower() or d.name == model_id.lower():
                return d
    return None


def _spec_from_dict(cfg: dict) -> ModelSpec:
    try:
        return parse_model_config(cfg)
    except ModelConfigError as exc:
        raise UserInputError(f"model ({exc.field})", exc.reason) from None


def resolve_model(model: str, revision: str | None = None, exact_counts: bool = True
                  ) -> ResolvedModel:
    """The ModelSpec for a path, a Hub id or a bundled snapshot name."""
    if not model or any(c in model for c in "\r\n\x00"):
        raise UserInputError("model", "must be a path or a Hub id without line breaks")
    p = Path(model).expanduser()
    if p.exists():
        try:
            cfg = read_config_file(p)
        except ModelConfigError as exc:
            raise UserInputError("model", exc.reason) from None
        return ResolvedModel(spec=_spec_from_dict(cfg), source=f"local:{p}",
                             local_dir=str(p if p.is_dir() else p.parent))
    if model.startswith((".", "/", "~")) or not patterns.matches(patterns.HUB_ID, model):
        snap = _snapshot_for(model)
        if snap:
            return ResolvedModel(spec=_spec_from_dict(read_config_file(snap)),
                                 source=f"snapshot:{snap}", local_dir=str(snap))
        raise UserInputError("model", f"{model!r} is neither an existing path nor a Hub id "
                                      "(org/name) nor a bundled snapshot in configs/models/")
    try:
        cfg = _hub_config(model, revision)
    except Exception as exc:
        snap = _snapshot_for(model)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        if snap is None:
            raise UserInputError("model", f"cannot fetch config.json of {model} from the Hub "
                                          f"({reason}) and no bundled snapshot matches") from None
        log.warning("Hub unreachable for %s (%s): using bundled snapshot %s", model, reason, snap)
        return ResolvedModel(spec=_spec_from_dict(read_config_file(snap)),
                             source=f"snapshot:{snap}", local_dir=str(snap),
                             note=f"Hub unreachable ({reason}); used bundled snapshot")
    spec = _spec_from_dict(cfg)
    if exact_counts and spec.quantization in (None, "fp8"):
        total = _hub_safetensors_total(model, revision)
        if total:
            spec = with_exact_counts(spec, total)
    return ResolvedModel(spec=spec, source=f"hub:{model}@{revision or 'main'}")


def _hub_resolvable() -> bool:
    """Can the Hub's host name be resolved at all? huggingface_hub retries a failed connection
    five times with backoff (~25 s); without DNS no retry can succeed, so ask once first."""
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _hub_config(model_id: str, revision: str | None) -> dict:
    """config.json through huggingface_hub: its cache, HF_TOKEN and HF_HUB_OFFLINE apply."""
    from huggingface_hub import hf_hub_download

    # Offline in fact: only huggingface_hub's cache can answer.
    cache_only = not _hub_resolvable()
    path = hf_hub_download(model_id, "config.json", revision=revision,
                           token=os.environ.get("HF_TOKEN") or None,
                           **({"local_files_only": True} if cache_only else {}))
    return read_config_file(path)


def _hub_safetensors_total(model_id: str, revision: str | None) -> int | None:
    """Exact parameter count from the safetensors headers (no weights downloaded)."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "TRUE") or not _hub_resolvable():
        return None
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(model_id, revision=revision,
                                        token=os.environ.get("HF_TOKEN") or None)
        return int(sum(meta.parameter_count.values())) or None
    except Exception as exc:
        log.info("no safetensors metadata for %s: %s", model_id, type(exc).__name__)
        return None
