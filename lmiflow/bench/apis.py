"""What each API sends and how its stream reads. Pure: bytes in, lines and counts out.

Four request forms, all streamed:

- `inputs`: LMI's rolling-batch schema on /invocations. Answer: JSON lines, each with a `token`
  object, the last adding `generated_text` and `details` (djl-serving
  serving/docs/lmi/user_guides/lmi_input_output_schema.md). With LMI's vLLM async service (the
  default engine) a line is built from one vLLM completion chunk
  (djl_python/lmi_vllm/request_response_utils.py, convert_completion_chunk_response_to_lmi_schema):
  its `text` holds every token produced since the previous write but `token.id` only the first,
  so lines are not tokens; the last line's `details.generated_tokens` is vLLM's
  `usage.completion_tokens + 1`.
- `messages`: LMI's chat form on /invocations. LMI hands the body to vLLM's
  ChatCompletionRequest as is (djl_python/lmi_vllm/vllm_async_service.py) and answers
  `chat.completion.chunk` objects as JSON lines (its stream formatter strips SSE's `data: `).
- `openai-chat`, `openai-completions`: /v1/chat/completions and /v1/completions of any
  OpenAI-compatible server (vLLM, TGI, LMI's OpenAI route), as server-sent events.

The parser accepts JSON lines and SSE for every form, so a server that picks the other framing
still reads right.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

ApiName = Literal["inputs", "messages", "openai-chat", "openai-completions"]
APIS: tuple[ApiName, ...] = ("inputs", "messages", "openai-chat", "openai-completions")
CHAT_APIS = ("messages", "openai-chat")

# Parameters that make an output exactly max_new_tokens long, in the order they are tried;
# the first one the endpoint accepts is used (loadgen probes). Sources: LMI's vLLM generation
# parameters list `ignore_eos_token` (mapped to vLLM's `ignore_eos` in
# request_response_utils.py); its TensorRT-LLM parameters have `min_length`; vLLM's
# ChatCompletionRequest/CompletionRequest take `ignore_eos` as an extra parameter.
FIXED_LENGTH: dict[ApiName, tuple[str, ...]] = {
    "inputs": ("ignore_eos_token", "min_length"),
    "messages": ("ignore_eos",),
    "openai-chat": ("ignore_eos",),
    "openai-completions": ("ignore_eos",),
}


def api_for_url(url_path: str) -> ApiName:
    """The API a URL path implies: OpenAI's routes by name, anything else LMI's inputs."""
    path = url_path.rstrip("/")
    if path.endswith("/chat/completions"):
        return "openai-chat"
    if path.endswith("/completions"):
        return "openai-completions"
    return "inputs"


def payload(
    api: ApiName, *, text: str | None, messages: list[dict[str, str]] | None,
    max_new_tokens: int, fixed_length: str | None, seed: int | None,
    model: str | None = None,
) -> dict[str, Any]:
    """One streaming request. Greedy decoding always: LMI's vLLM service samples unless
    do_sample is false (it passes temperature through, request_response_utils.py), and a
    sampled output length is not reproducible."""
    if api == "inputs":
        params: dict[str, Any] = {"max_new_tokens": max_new_tokens, "details": True,
                                  "do_sample": False}
        if seed is not None:
            params["seed"] = seed
        if fixed_length == "ignore_eos_token":
            params["ignore_eos_token"] = True
        elif fixed_length == "min_length":
            params["min_length"] = max_new_tokens
        return {"inputs": text if text is not None else _flatten(messages), "parameters": params,
                "stream": True}
    body: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": 0, "stream": True,
                            "stream_options": {"include_usage": True}}
    if api in CHAT_APIS:
        body["messages"] = messages if messages is not None else [
            {"role": "user", "content": text or ""}]
    else:
        body["prompt"] = text if text is not None else _flatten(messages)
    if api != "messages":
        body["model"] = model
    if seed is not None:
        body["seed"] = seed
    if fixed_length == "ignore_eos":
        body["ignore_eos"] = True
    return body


def _flatten(messages: list[dict[str, str]] | None) -> str:
    return "\n".join(m.get("content", "") for m in messages or [])


# --- reading a stream ------------------------------------------------------------------------


@dataclass
class StreamLine:
    t: float
    text: str
    token: bool  # the line stands for at least one generated token
    usage_tokens: int | None = None  # cumulative completion tokens the server says, if any


@dataclass
class ParsedStream:
    lines: list[StreamLine] = field(default_factory=list)
    reported_output_tokens: int | None = None
    reported_input_tokens: int | None = None
    error: str | None = None
    error_t: float | None = None


def split_lines(chunks: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    """Whole lines, each stamped with the arrival of the chunk that completed it."""
    out: list[tuple[float, bytes]] = []
    buf = b""
    t = 0.0
    for t, data in chunks:
        buf += data
        if b"\n" in data:
            *lines, buf = buf.split(b"\n")
            out.extend((t, line) for line in lines)
    if buf.strip():
        out.append((t, buf))
    return out


def parse_stream(api: ApiName, chunks: list[tuple[float, bytes]]) -> ParsedStream:
    read = _read_lmi if api == "inputs" else _read_openai
    ps = ParsedStream()
    for t, raw in split_lines(chunks):
        raw = raw.strip()
        if not raw or raw.startswith(b":"):  # blank line, SSE comment
            continue
        if raw.startswith(b"data:"):
            raw = raw[5:].strip()
            if raw == b"[DONE]":
                break
        elif raw.startswith((b"event:", b"id:", b"retry:")):
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            _fail(ps, t, f"unparsable stream line: {raw[:120]!r}")
            break
        if not isinstance(obj, dict):
            _fail(ps, t, f"unexpected stream line: {raw[:120]!r}")
            break
        read(ps, t, obj)
        if ps.error is not None:
            break
    return ps


def _fail(ps: ParsedStream, t: float, msg: str) -> None:
    if ps.error is None:
        ps.error, ps.error_t = msg, t


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _read_lmi(ps: ParsedStream, t: float, obj: dict) -> None:
    token = obj.get("token")
    details = obj.get("details")
    if isinstance(details, dict) and details.get("finish_reason") == "error":
        _fail(ps, t, "server: stream ended with finish_reason=error"
              + (f" ({obj['error']})" if obj.get("error") else ""))
        return
    if isinstance(token, dict):
        if token.get("special_token") and token.get("id") == -1:  # LMI's error placeholder
            _fail(ps, t, f"server error: {str(obj.get('error') or obj)[:200]}")
            return
        ps.lines.append(StreamLine(t, str(token.get("text") or ""), True))
    elif obj.get("error") or obj.get("code") not in (None, 200):
        _fail(ps, t, f"server error: {str(obj.get('error') or obj.get('message') or obj)[:200]}")
        return
    if isinstance(details, dict):
        ps.reported_output_tokens = _int(details.get("generated_tokens"))
        # vLLM service: input_length; the local server: inputs_tokens.
        n_in = _int(details.get("input_length"))
        ps.reported_input_tokens = n_in if n_in is not None else _int(details.get("inputs_tokens"))


def _read_openai(ps: ParsedStream, t: float, obj: dict) -> None:
    if obj.get("object") == "error" or obj.get("error"):
        err = obj.get("error")
        msg = err.get("message") if isinstance(err, dict) else err or obj.get("message")
        _fail(ps, t, f"server error: {str(msg or obj)[:200]}")
        return
    usage = obj.get("usage")
    used = _int(usage.get("completion_tokens")) if isinstance(usage, dict) else None
    if isinstance(usage, dict):
        ps.reported_output_tokens = used if used is not None else ps.reported_output_tokens
        n_in = _int(usage.get("prompt_tokens"))
        ps.reported_input_tokens = n_in if n_in is not None else ps.reported_input_tokens
    for choice in obj.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        if choice.get("finish_reason") == "error":
            _fail(ps, t, "server: stream ended with finish_reason=error"
                  + (f" ({obj['error']})" if obj.get("error") else ""))
            return
        delta = choice.get("delta")
        text = (delta or {}).get("content") if isinstance(delta, dict) else choice.get("text")
        if text:
            ps.lines.append(StreamLine(t, str(text), True, used))
