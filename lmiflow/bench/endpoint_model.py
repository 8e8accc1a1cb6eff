"""What a benchmark needs to know about the model behind an endpoint: its tokenizer (exact
prompt lengths, token counts) and the longest sequence it accepts (max_model_len).

For a named endpoint lmiflow reads the serving.properties the endpoint serves (the target
fetches it: Target.model_files) and finds the tokenizer where the weights are: the local
directory option.model_id names, the files beside the weights in S3, or the Hub id in the
local Hugging Face cache (then the Hub). For a URL of an OpenAI-compatible server, its
/v1/models answer names the model and, on vLLM, its max_model_len.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from lmiflow.bench.tokens import TOKENIZER_FILES, TokenizerNotFound, load_tokenizer

if TYPE_CHECKING:
    from lmiflow.targets.base import Target


@dataclass
class ModelInfo:
    tokenizer: Any | None = None
    tokenizer_source: str | None = None
    max_model_len: int | None = None
    model: str | None = None  # the name an OpenAI server knows the model by
    notes: list[str] = field(default_factory=list)


def _max_position(directory: Path) -> int | None:
    try:
        cfg = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    value = text.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def endpoint_model(target: Target, endpoint: str, load: bool = True) -> ModelInfo:
    """Tokenizer and max_model_len of a named endpoint's model, as far as they can be found;
    notes say what could not be. load=False: the endpoint's files are read, no tokenizer is
    loaded (a recorded run: no Hub, no transformers)."""
    info = ModelInfo()
    with tempfile.TemporaryDirectory(prefix="lmiflow-model-") as tmp:
        files = target.model_files(endpoint, Path(tmp), TOKENIZER_FILES)
        if files is None:
            info.notes.append(f"cannot read the model files of {endpoint}")
            return info
        found, props = files.directory, files.properties
        model_id = props.get("option.model_id", "")
        limit = props.get("option.max_model_len", "")
        info.max_model_len = int(limit) if limit.isdigit() and int(limit) > 0 else None
        candidates: list[tuple[str, str]] = []
        if model_id and not model_id.startswith("s3://") and Path(model_id).is_dir():
            candidates.append((model_id, model_id))
        if (found / "tokenizer_config.json").is_file() or (found / "tokenizer.json").is_file():
            label = model_id if model_id.startswith("s3://") else f"{endpoint}'s model files"
            candidates.append((str(found), label))
        if model_id and not model_id.startswith(("s3://", "/", ".")):
            candidates.append((model_id, model_id))  # a Hub id: the cache, then the Hub
        if not load:
            return info
        reasons = []
        for source, label in candidates:
            try:
                info.tokenizer = load_tokenizer(
                    source, revision=props.get("option.revision"),
                    trust_remote_code=props.get("option.trust_remote_code") == "true")
            except TokenizerNotFound as exc:
                reasons.append(str(exc))
                continue
            info.tokenizer_source = label
            if info.max_model_len is None and Path(source).is_dir():
                info.max_model_len = _max_position(Path(source))
            break
        if info.tokenizer is None:
            info.notes.append("no tokenizer found for the endpoint's model ("
                              + ("; ".join(reasons) or f"option.model_id {model_id!r}") + ")")
    return info


def openai_model(url: str, timeout_s: float = 10.0, headers: dict[str, str] | None = None
                 ) -> ModelInfo:
    """The first model an OpenAI-compatible server lists at /v1/models (vLLM adds its
    max_model_len), and its tokenizer when the Hugging Face cache holds it."""
    import httpx

    p = urlsplit(url)
    root = p.path.split("/v1/")[0] if "/v1/" in p.path else ""
    models_url = urlunsplit((p.scheme, p.netloc, f"{root}/v1/models", "", ""))
    info = ModelInfo()
    try:
        resp = httpx.get(models_url, timeout=timeout_s, headers=headers)
        data = (resp.json().get("data") or []) if resp.status_code == 200 else []
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        info.notes.append(f"cannot list the server's models ({type(exc).__name__})")
        return info
    if not data or not isinstance(data[0], dict):
        info.notes.append(f"{models_url} lists no model")
        return info
    info.model = str(data[0].get("id") or "") or None
    limit = data[0].get("max_model_len")
    info.max_model_len = limit if isinstance(limit, int) and limit > 0 else None
    if info.model:
        try:
            info.tokenizer = load_tokenizer(info.model, allow_download=False)
            info.tokenizer_source = info.model
        except TokenizerNotFound:
            info.notes.append(f"the tokenizer of {info.model} is not in the local Hugging "
                              "Face cache: pass --tokenizer for exact lengths")
    return info
