"""What the local server writes back: LMI's answer shapes and OpenAI's chat-completion shapes.

Pure functions of a finished (or finishing) generation, kept apart from the HTTP handlers so
the streaming and non-streaming answers of one API are built from the same pieces and cannot
disagree (the final stream line carries exactly what the non-streaming body holds).
"""

from __future__ import annotations

import json
import time
from typing import Any

from lmiflow.serving.engine import Step
from lmiflow.serving.generation import Generation
from lmiflow.serving.schema import ChatRequest, InvocationRequest

JSONLINES = "application/jsonlines"
ERROR_CODE = 424  # LMI answers every model or request error with this code in the body


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def error_body(message: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, "code": ERROR_CODE, **extra}


# ---- LMI: inputs + parameters ----------------------------------------------------------------


def lmi_final(req: InvocationRequest, gen: Generation) -> dict[str, Any]:
    text = req.inputs + gen.text if req.parameters.return_full_text else gen.text
    return {
        "generated_text": text,
        "details": {
            "finish_reason": gen.finish_reason,
            "generated_tokens": len(gen.token_ids),
            "inputs": req.inputs,
            "inputs_tokens": len(gen.input_ids),
        },
    }


def lmi_body(req: InvocationRequest, gen: Generation) -> dict[str, Any]:
    final = lmi_final(req, gen)
    if not req.parameters.details:
        return {"generated_text": final["generated_text"]}
    final["details"]["tokens"] = gen.tokens
    return final


def lmi_line(req: InvocationRequest, gen: Generation, step: Step, piece: str) -> bytes:
    out: dict[str, Any] = {"token": {"id": step.token_id, "text": piece, "log_prob": step.log_prob}}
    if gen.finish_reason is not None:
        out.update(lmi_final(req, gen))
    return dumps(out) + b"\n"


def lmi_error_line(gen: Generation, message: str) -> bytes:
    return dumps({
        "token": {"id": -1, "text": "", "log_prob": -1, "special_token": True},
        "generated_text": gen.text,
        "details": {"finish_reason": "error", "generated_tokens": None, "inputs": None},
        **error_body(message),
    }) + b"\n"


# ---- OpenAI chat completions -----------------------------------------------------------------


def usage(gen: Generation) -> dict[str, int]:
    n_in, n_out = len(gen.input_ids), len(gen.token_ids)
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def chat_logprobs(pairs: list[tuple[str, float | None]]) -> dict[str, Any]:
    return {"content": [
        {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
        for t, lp in pairs
    ]}


def chat_body(cid: str, gen: Generation) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": gen.text},
            "logprobs": None,
            "finish_reason": gen.finish_reason,
        }],
        "usage": usage(gen),
    }


class ChatChunks:
    """The chunks of one streamed chat completion: they share its id and creation time."""

    def __init__(self, cid: str, req: ChatRequest, gen: Generation):
        self.cid, self.req, self.gen = cid, req, gen
        self.created = int(time.time())

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.cid, "object": "chat.completion.chunk", "created": self.created,
                "choices": [choice]}

    def line(self, step: Step, piece: str) -> bytes:
        gen = self.gen
        delta: dict[str, Any] = {"content": piece}
        if len(gen.token_ids) == 1:
            delta["role"] = "assistant"
        chunk = self._chunk({
            "index": 0, "delta": delta,
            "logprobs": chat_logprobs([(piece, step.log_prob)]) if self.req.logprobs else None,
            "finish_reason": gen.finish_reason,
        })
        if gen.finish_reason is not None:
            chunk["usage"] = usage(gen)
        return dumps(chunk) + b"\n"

    def error_line(self, message: str) -> bytes:
        chunk = self._chunk({"index": 0, "delta": {}, "finish_reason": "error"})
        return dumps({**chunk, **error_body(message)}) + b"\n"
