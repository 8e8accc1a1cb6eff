"""The generation engine behind the local model server: transformers' own continuous batching.

Why transformers' `ContinuousBatchingManager` (`model.init_continuous_batching()`) and not a
hand-written loop: it already runs one background thread doing batched forward passes over a
paged, per-sequence KV cache, admits new sequences while others decode, splits long prompts
(chunked prefill), supports per-request temperature / top-k / top-p, log-probs, streaming and
cancellation, and uses flash attention / CUDA graphs on a GPU. This module only adapts it to
asyncio (one queue per request) and keeps the numbers the server reports (forward passes).

Known difference from LMI/vLLM: `log_prob` is taken from the distribution the token was
sampled from (after temperature / top-k / top-p), so greedy requests (top-k 1) report 0.0;
vLLM reports the raw model log-probability by default.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from lmiflow.sizing.memory import GiB

log = logging.getLogger("lmiflow.server")

# What the manager reports per request; kept as plain data so the server never touches torch.
FINISH_EOS = "eos_token"
FINISH_LENGTH = "length"


class EngineError(RuntimeError):
    """Generation failed inside the engine (reported to the client as a model error, 424)."""


@dataclass(frozen=True)
class Sampling:
    """Per-request sampling. Greedy is top_k=1: the batch shares one sampler (do_sample is
    global in the manager), and top-k=1 sampling is exactly argmax."""

    temperature: float = 1.0
    top_k: int = 1
    top_p: float = 1.0
    ignore_eos: bool = False  # run to max_new_tokens (an EOS token is just another token)


@dataclass
class EngineOptions:
    model_path: str
    dtype: str = "auto"  # fp32 | fp16 | bf16 | auto
    max_rolling_batch_size: int = 32
    max_model_len: int | None = None
    max_batch_tokens: int | None = None  # tokens per forward pass (prefill chunk)
    trust_remote_code: bool = False
    revision: str | None = None
    gpu_memory_utilization: float | None = None
    cpu_kv_cache_fraction: float = 0.25  # of physical RAM, at most, for the KV cache on CPU
    page_size: int = 64


@dataclass
class Step:
    """One new token of one request; `finish_reason` is set on the request's last token."""

    token_id: int
    log_prob: float | None
    finish_reason: str | None = None


@dataclass
class _Aborted:
    """Put in a request's queue by Engine.abort: its generation ends with this reason."""

    reason: str


@dataclass
class _Request:
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    seen: int = 0
    done: bool = False


_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def cpu_threads() -> int:
    """LMIFLOW_CPU_THREADS, else half the cores this process may use, at least one. During a
    deploy the candidate, the production server and the load generator share the cores;
    torch's default (every core per process) oversubscribes them, and its threads then wait
    for each other at every operation: on a busy 2-core machine the demo model's c=1 TTFT p50
    was 180-330 ms with two threads and 14-30 ms with one (perf/local_threads.py). The
    benchmark measured the contention, not the model.
    """
    if os.environ.get("LMIFLOW_CPU_THREADS", "").isdigit():
        return max(1, int(os.environ["LMIFLOW_CPU_THREADS"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


class Engine:
    """Loads the model and tokenizer, runs the continuous-batching loop, serves async requests."""

    def __init__(self, opts: EngineOptions):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.opts = opts
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(cpu_threads())
        common: dict[str, Any] = {"trust_remote_code": opts.trust_remote_code}
        if opts.revision:
            common["revision"] = opts.revision
        self.tokenizer = AutoTokenizer.from_pretrained(opts.model_path, **common)
        dtype = _DTYPES.get(opts.dtype, "auto")
        # .to() rather than device_map: device_map needs accelerate, which a one-device server
        # does not.
        model = AutoModelForCausalLM.from_pretrained(opts.model_path, dtype=dtype, **common)
        model.to(self.device).eval()
        self.model = model
        cfg = model.config.get_text_config()
        self.vocab_size = int(cfg.vocab_size)
        positions = getattr(cfg, "max_position_embeddings", None)
        model_limit = positions if isinstance(positions, int) and positions > 0 else 4096
        self.max_model_len = min(opts.max_model_len or model_limit, model_limit)
        if opts.max_model_len and opts.max_model_len > model_limit:
            log.warning(
                "option.max_model_len=%d exceeds the model's %d positions; using %d",
                opts.max_model_len, model_limit, model_limit,
            )
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = cfg.eos_token_id if cfg.eos_token_id is not None else self.tokenizer.eos_token_id
        eos_list = eos if isinstance(eos, list) else [] if eos is None else [eos]
        self.eos_ids: set[int] = {int(e) for e in eos_list}
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))

        # Non-default values make transformers build the temperature / top-k / top-p processors;
        # every request then passes its own values (per_request_processors), so these defaults
        # are never used for sampling.
        gen = GenerationConfig(
            do_sample=True, temperature=0.5, top_k=50, top_p=0.5,
            eos_token_id=sorted(self.eos_ids) or -1, max_new_tokens=32,
        )
        page = opts.page_size
        cb_kwargs: dict[str, Any] = {
            "per_request_processors": True,
            "return_logprobs": True,
            "max_requests_per_batch": opts.max_rolling_batch_size,
            "page_size": page,
        }
        if self.device == "cpu":
            cache_tokens = self._cpu_cache_tokens(cfg, model.dtype.itemsize)
            cb_kwargs["num_blocks"] = max(2, math.ceil(cache_tokens / page))
            cb_kwargs["max_batch_tokens"] = opts.max_batch_tokens or min(512, self.max_model_len)
            cb_kwargs["use_async_batching"] = False
        else:
            if opts.max_batch_tokens:
                cb_kwargs["max_batch_tokens"] = opts.max_batch_tokens
            if opts.gpu_memory_utilization:
                cb_kwargs["max_memory_percent"] = opts.gpu_memory_utilization
        self.manager = model.init_continuous_batching(
            generation_config=gen, continuous_batching_config=ContinuousBatchingConfig(**cb_kwargs)
        )
        self._requests: dict[str, _Request] = {}
        self.stopping = False
        self._lock = threading.Lock()
        self.manager.start()
        log.info(
            "engine ready: device=%s dtype=%s max_model_len=%d max_rolling_batch_size=%d",
            self.device, model.dtype, self.max_model_len, opts.max_rolling_batch_size,
        )

    def _cpu_cache_tokens(self, cfg: Any, itemsize: int) -> int:
        """Enough KV cache for every slot at full length, capped to a fraction of RAM: the
        manager then queues or offloads under pressure instead of the process running OOM."""
        want = self.opts.max_rolling_batch_size * self.max_model_len
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        per_token = 2 * cfg.num_hidden_layers * heads * head_dim * itemsize
        cap = int(_physical_memory_bytes() * self.opts.cpu_kv_cache_fraction) // max(per_token, 1)
        if want > cap:
            log.warning("KV cache capped at %d tokens (%.0f%% of RAM); wanted %d",
                        cap, self.opts.cpu_kv_cache_fraction * 100, want)
        return max(min(want, cap), self.opts.page_size * 2)

    # ---- tokenization ---------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        # The template already holds the BOS token where the model wants it.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def detokenizer(self) -> TokenTexts:
        return TokenTexts(self.tokenizer)

    # ---- generation -----------------------------------------------------------------------

    def alive(self) -> bool:
        status = self.manager.background_thread_status
        return self.manager.is_running() and status.fatal_error is None

    def stats(self) -> dict[str, int]:
        bp = self.manager.batch_processor
        sched = getattr(bp, "scheduler", None)
        return {
            # One generation step of the manager is one batched forward pass of the model.
            "forward_passes": int(getattr(self.manager, "current_batch", 0)),
            "engine_active": len(getattr(sched, "active_requests", {}) or {}),
            "engine_waiting": len(getattr(sched, "waiting_requests", {}) or {}),
            "engine_requests": len(self._requests),
        }

    async def generate(
        self, input_ids: list[int], max_new_tokens: int, sampling: Sampling,
        stream: bool = True,
    ) -> AsyncIterator[Step]:
        """Yield each new token as the batch loop produces it (stream=False: all at the end,
        which spares the event loop one wake-up per token). Closing the iterator early
        (client gone, stop sequence) cancels the request and frees its cache blocks."""
        rid = f"r-{uuid.uuid4().hex[:12]}"
        req = _Request()
        self._requests[rid] = req

        def on_output(out: Any) -> None:  # runs on the event loop (call_soon_threadsafe)
            req.queue.put_nowait(out)

        # Register before adding, so no output can reach the shared queue instead.
        self.manager.register_result_handler(rid, on_output)
        # eos_token_id -1: the manager stops on no token (requests.py: negative ids dropped).
        eos = -1 if sampling.ignore_eos else (sorted(self.eos_ids) or -1)
        added = self.manager.add_request(
            input_ids, request_id=rid, max_new_tokens=max_new_tokens, streaming=stream,
            eos_token_id=eos,
            temperature=float(sampling.temperature), top_k=int(sampling.top_k),
            top_p=float(sampling.top_p),
        )
        try:
            if added is None:
                raise EngineError("the generation loop is not accepting requests")
            while not req.done:
                out = await self._next_output(req)
                if isinstance(out, _Aborted):
                    raise EngineError(out.reason)
                if out.error is not None or out.status.name == "FAILED":
                    raise EngineError(out.error or "generation failed")
                finished = out.is_finished()
                tokens, logprobs = out.generated_tokens, out.logprobs
                new = range(req.seen, len(tokens))
                req.seen = len(tokens)
                if finished:
                    req.done = True
                for i in new:
                    tok = int(tokens[i])
                    lp = float(logprobs[i]) if i < len(logprobs) else None
                    reason = None
                    if finished and i == len(tokens) - 1:
                        stopped = tok in self.eos_ids and not sampling.ignore_eos
                        reason = FINISH_EOS if stopped else FINISH_LENGTH
                    yield Step(tok, lp, reason)
        finally:
            self._requests.pop(rid, None)
            if not req.done:
                self.manager.cancel_request(rid)
                # A cancelled request gets no final output, so its handler would stay behind.
                router = self.manager.output_router
                with router._lock:
                    router.result_handlers.pop(rid, None)

    async def _next_output(self, req: _Request) -> Any:
        while True:
            try:
                return await asyncio.wait_for(req.queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if not self.alive():
                    err = self.manager.background_thread_status.fatal_error
                    raise EngineError(f"generation loop stopped: {err}") from None

    def abort(self, reason: str) -> None:
        """End every request in flight with EngineError(reason), after the tokens it already
        has. Call on the event loop (the queues are asyncio's)."""
        for req in list(self._requests.values()):
            req.queue.put_nowait(_Aborted(reason))

    def shutdown(self, timeout: float = 10.0) -> None:
        self.stopping = True
        try:
            self.manager.stop(block=True, timeout=timeout, hard_stop=True)
        except Exception as exc:  # shutting down anyway; say why it was not clean
            log.warning("engine stop: %s", exc)


class TokenTexts:
    """Text of each new token for streaming, exact across multi-byte characters: the
    `tokenizers` DecodeStream holds back bytes until they form whole UTF-8 characters."""

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._ids: list[int] = []
        self._text = ""
        if self._backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        if self._backend is not None:
            return self._stream.step(self._backend, token_id) or ""
        # Slow tokenizers: decode the whole sequence and emit what is new and complete.
        self._ids.append(token_id)
        text = self._tok.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        new, self._text = text[len(self._text):], text
        return new
