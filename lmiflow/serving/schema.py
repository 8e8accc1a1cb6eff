"""The LMI request schemas the local server accepts, validated before anything reaches the model.

Two forms, as LMI serves them on /invocations: `inputs` + `parameters` (LMI's rolling-batch
schema) and `messages` (its OpenAI-style chat-completions schema). Unknown parameters are
rejected with a message naming them, rather than silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmiflow.serving.engine import Sampling


class BadRequest(ValueError):
    """The client's request cannot be served; answered 4xx with `code: 424` in the body."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class GenerationParameters(BaseModel):
    """LMI GenerationParameters (common to every rolling-batch backend)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=100.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    do_sample: bool | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=16)
    details: bool = False
    return_full_text: bool = False
    # Accepted for compatibility; one sampler serves the whole batch, so no per-request seed.
    seed: int | None = None
    repetition_penalty: float | None = None
    decoder_input_details: bool = False
    # LMI's vLLM generation parameter (lmi_input_output_schema.md, "Additional vLLM Generation
    # Parameters"), mapped to vLLM's ignore_eos: generate max_new_tokens whatever the model
    # says. Benchmarks use it for fixed-length runs.
    ignore_eos_token: bool = False

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not s or len(s) > 256 for s in v):
            raise ValueError("each stop sequence must hold 1..256 characters")
        return v

    @field_validator("repetition_penalty")
    @classmethod
    def _rep(cls, v: float | None) -> float | None:
        if v is not None and v != 1.0:
            raise ValueError("not supported by the local server (only 1.0)")
        return v


class InvocationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: GenerationParameters = Field(default_factory=GenerationParameters)
    stream: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    """OpenAI's stream_options; the local server puts usage on the last chunk either way."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's extension, accepted for compatibility


class ChatRequest(BaseModel):
    """LMI chat-completions request (OpenAI-compatible subset)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    stop: str | list[str] | None = None
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    n: Literal[1] = 1
    seed: int | None = None
    user: str | None = None
    frequency_penalty: Literal[0, 0.0] = 0.0
    presence_penalty: Literal[0, 0.0] = 0.0
    # vLLM's extra chat parameter (LMI passes chat bodies to vLLM's ChatCompletionRequest).
    ignore_eos: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 16 or any(not s or len(s) > 256 for s in stops):
            raise BadRequest("stop: at most 16 sequences of 1..256 characters")
        return stops


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_invocation(body: object) -> InvocationRequest | ChatRequest:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        if "messages" in body:
            return ChatRequest.model_validate(body)
        if "inputs" not in body:
            raise BadRequest("inputs: required (or messages, for the chat form)")
        return InvocationRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None


def lmi_sampling(p: GenerationParameters, vocab_size: int) -> Sampling:
    """LMI semantics: greedy unless do_sample; from LMI 0.32 sampling is also inferred from
    sampling parameters when do_sample is not given. temperature 0 means greedy."""
    do_sample = p.do_sample
    if do_sample is None:
        do_sample = bool(
            (p.temperature is not None and p.temperature > 0 and p.temperature != 1.0)
            or (p.top_p is not None and p.top_p < 1.0)
            or (p.top_k is not None and p.top_k > 0)
        )
    return _sampling(do_sample, p.temperature, p.top_k, p.top_p, vocab_size,
                     p.ignore_eos_token)


def chat_sampling(r: ChatRequest, vocab_size: int) -> Sampling:
    """OpenAI semantics: sampling at temperature 1.0 unless temperature is 0."""
    return _sampling(r.temperature != 0, r.temperature, r.top_k, r.top_p, vocab_size,
                     r.ignore_eos)


def _sampling(
    do_sample: bool, temperature: float | None, top_k: int | None, top_p: float | None,
    vocab_size: int, ignore_eos: bool = False,
) -> Sampling:
    if not do_sample or temperature == 0:
        return Sampling(temperature=1.0, top_k=1, top_p=1.0, ignore_eos=ignore_eos)
    k = top_k if top_k and top_k > 0 else vocab_size
    return Sampling(
        temperature=temperature if temperature else 1.0,
        top_k=min(k, vocab_size),
        top_p=top_p if top_p is not None else 1.0,
        ignore_eos=ignore_eos,
    )
