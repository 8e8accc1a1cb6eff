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
from lmiflow.sizing.weights_check import compare_with_weights, parameter_count
from lmiflow.targets.weights import ModelSource, local_safetensors

log = logging.getLogger(__name__)

SNAPSHOTS = Path(__file__).resolve().parents[1] / "configs" / "models"


class ResolvedModel(BaseModel):
    spec: ModelSpec
    source: str  # "local:<path>", "hub:<id>@<rev>", "snapshot:<dir>", "s3:<uri>"
    local_dir: str | None = None
    note: str | None = None
    origin: ModelSource | None = None  # where the weights are (deploys set it)


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


def _shown(path: Path) -> str:
    """A path as short as it can be said: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def hub_failure(exc: Exception) -> str:
    """Why the Hub did not answer, as one complete clause: the upstream messages run to
    several sentences of advice about other settings, and cut at a fixed length they end
    mid-word."""
    import huggingface_hub.errors as hf
    from huggingface_hub import constants

    if isinstance(exc, hf.OfflineModeIsEnabled) or (
            isinstance(exc, hf.LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE):
        return "offline: HF_HUB_OFFLINE is set"
    if isinstance(exc, hf.LocalEntryNotFoundError):
        return "no connection to the Hub and not in the local cache"
    if isinstance(exc, hf.GatedRepoError):
        return "gated model: accept its license on the Hub and set HF_TOKEN"
    if isinstance(exc, hf.RepositoryNotFoundError):
        return "no such model on the Hub, or private without HF_TOKEN"
    if isinstance(exc, hf.RevisionNotFoundError):
        return "no such revision"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    sentence = first.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {sentence}" if sentence else type(exc).__name__


def spec_from_config(cfg: dict, where: str = "config.json") -> ModelSpec:
    """The ModelSpec of a config.json; a bad value is UserInputError naming the file (where)
    and the key: `model (models/x/config.json:vocab_size): must be ...`."""
    try:
        return parse_model_config(cfg)
    except ModelConfigError as exc:
        raise _named(exc, where) from None


def _named(exc: ModelConfigError, where: str) -> UserInputError:
    return UserInputError(f"model ({where}{exc.field.removeprefix('config.json')})", exc.reason)


def with_weights(cfg: dict, spec: ModelSpec, shapes: dict[str, list[int]] | None,
                 total: int | None, where: str) -> tuple[ModelSpec, str | None]:
    """The config's spec checked against its weights' tensor shapes (a disagreement is
    UserInputError naming the key and both values), then given their exact parameter count;
    and why part of the check was skipped, if it was."""
    note = None
    if shapes:
        total = total or parameter_count(shapes)
        try:
            note = compare_with_weights(cfg, spec, shapes, total)
        except ModelConfigError as exc:
            raise _named(exc, where) from None
        if note:
            log.info("%s: %s", where, note)
    if total and spec.quantization in (None, "fp8"):
        spec = with_exact_counts(spec, total)
    return spec, note


def _config_path(path: Path) -> str:
    return _shown(path / "config.json" if path.is_dir() else path)


def resolve_model(model: str, revision: str | None = None, exact_counts: bool = True,
                  token: str | None = None) -> ResolvedModel:
    """The ModelSpec for a path, a Hub id or a bundled snapshot name. token: the Hub token
    (default: HF_TOKEN)."""
    token = token or os.environ.get("HF_TOKEN") or None
    if model.startswith("s3://"):
        return _resolve_s3(model if model.endswith("/") else model + "/")
    if not model or any(c in model for c in "\r\n\x00"):
        raise UserInputError("model", "must be a path or a Hub id without line breaks")
    p = Path(model).expanduser()
    if p.exists():
        try:
            cfg = read_config_file(p)
        except ModelConfigError as exc:
            raise UserInputError("model", exc.reason) from None
        where, local_dir = _config_path(p), p if p.is_dir() else p.parent
        spec, note = with_weights(cfg, spec_from_config(cfg, where), local_safetensors(local_dir),
                                  None, where)
        return ResolvedModel(spec=spec, source=f"local:{p}", local_dir=str(local_dir), note=note)
    if model.startswith((".", "/", "~")) or not patterns.matches(patterns.HUB_ID, model):
        snap = _snapshot_for(model)
        if snap:
            return ResolvedModel(spec=spec_from_config(read_config_file(snap), _config_path(snap)),
                                 source=f"snapshot:{snap}", local_dir=str(snap))
        raise UserInputError("model", f"{model!r} is neither an existing path nor a Hub id "
                                      "(org/name) nor a bundled snapshot in configs/models/")
    try:
        cfg = _hub_config(model, revision, token)
    except Exception as exc:
        snap = _snapshot_for(model)
        reason = hub_failure(exc)
        if snap is None:
            raise UserInputError("model", f"cannot fetch config.json of {model} from the Hub "
                                          f"({reason}) and no bundled snapshot matches") from None
        why = ("not readable with this Hub token" if _is_access_error(exc)
               else "Hub unreachable")
        log.warning("%s for %s (%s): planning from the bundled snapshot %s", why, model,
                    reason, _shown(snap))
        return ResolvedModel(spec=spec_from_config(read_config_file(snap), _config_path(snap)),
                             source=f"snapshot:{snap}", local_dir=str(snap),
                             note=f"{why} ({reason}); used bundled snapshot")
    where = f"hf://{model}/config.json"
    spec, note = spec_from_config(cfg, where), None
    if exact_counts:
        total, shapes = _hub_safetensors(model, revision, token)
        spec, note = with_weights(cfg, spec, shapes, total, where)
    return ResolvedModel(spec=spec, source=f"hub:{model}@{revision or 'main'}", note=note)


def resolved_from_s3(origin: ModelSource, cfg: dict, total: int | None) -> ResolvedModel:
    """An s3:// model: its config.json, with the exact count from its safetensors headers."""
    where = f"{origin.id.rstrip('/')}/config.json"
    spec, _ = with_weights(cfg, spec_from_config(cfg, where), None, total, where)
    return ResolvedModel(spec=spec, source=f"s3:{origin.id}", origin=origin, note=origin.note)


def _resolve_s3(uri: str) -> ResolvedModel:
    """`lmiflow plan --model s3://...`: read the prefix with boto3's default credentials."""
    import boto3

    from lmiflow.targets.aws_requests import guard
    from lmiflow.targets.weights import s3_source

    try:
        origin, cfg, total = s3_source(guard(boto3.Session().client("s3")), uri)
    except UserInputError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserInputError("model", f"cannot read {uri} ({type(exc).__name__}: {first})"
                             ) from None
    return resolved_from_s3(origin, cfg, total)


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


def _is_access_error(exc: Exception) -> bool:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    return isinstance(exc, GatedRepoError | RepositoryNotFoundError)


def _endpoint() -> str:
    """HF_ENDPOINT read at each call (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_config(model_id: str, revision: str | None, token: str | None) -> dict:
    """config.json through huggingface_hub: its cache and HF_HUB_OFFLINE apply."""
    from huggingface_hub import hf_hub_download

    # Offline in fact: only huggingface_hub's cache can answer.
    cache_only = not _hub_resolvable()
    path = hf_hub_download(model_id, "config.json", revision=revision, token=token or False,
                           endpoint=_endpoint(),
                           **({"local_files_only": True} if cache_only else {}))
    return read_config_file(path)


def _hub_safetensors(model_id: str, revision: str | None, token: str | None
                     ) -> tuple[int | None, dict[str, list[int]] | None]:
    """Exact parameter count and tensor shapes from the safetensors headers (no weights
    downloaded)."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "TRUE") or not _hub_resolvable():
        return None, None
    try:
        from huggingface_hub import HfApi

        meta = HfApi(endpoint=_endpoint()).get_safetensors_metadata(
            model_id, revision=revision, token=token or False)
        total = int(sum(meta.parameter_count.values())) or None
    except Exception as exc:
        log.info("no safetensors metadata for %s: %s", model_id, type(exc).__name__)
        return None, None
    files = getattr(meta, "files_metadata", None) or {}
    shapes = {name: list(t.shape) for f in files.values() for name, t in f.tensors.items()}
    return total, shapes or None
