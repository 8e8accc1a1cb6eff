"""A request as it came off the wire (bench.http.RawResponse) → a RequestRecord for the
metrics. Runs after the level, off the clock: this is where the stream is parsed and its
tokens counted."""

from __future__ import annotations

from typing import Any

from lmiflow.bench.apis import ApiName, parse_stream
from lmiflow.bench.http import RawResponse
from lmiflow.bench.metrics import RequestRecord
from lmiflow.bench.tokens import count_tokens


def to_record(
    raw: RawResponse, api: ApiName, tokenizer: Any | None = None, *, warmup: bool = False,
    repeat: int = 0, prompt_tokens: int | None = None,
) -> RequestRecord:
    rec = RequestRecord(start=raw.start, warmup=warmup, repeat=repeat, timed_out=raw.timed_out,
                        input_tokens=prompt_tokens)
    if raw.status is not None and raw.status != 200:
        body = b"".join(d for _, d in raw.chunks)[:300].decode("utf-8", "replace")
        rec.error = f"HTTP {raw.status}: {body}" if body else raw.error or f"HTTP {raw.status}"
        rec.end = raw.end
        return rec
    ps = parse_stream(api, raw.chunks)
    lines = [ln for ln in ps.lines if ln.token]
    counts, source = count_tokens(ps, tokenizer)
    rec.token_times = [ln.t for ln in lines]
    rec.chunk_tokens = counts
    rec.output_tokens = sum(counts)
    rec.token_source = source
    rec.generated_tokens_reported = ps.reported_output_tokens
    if ps.reported_input_tokens is not None:
        rec.input_tokens = ps.reported_input_tokens
    rec.first_token = next((ln.t for ln in lines if ln.text), lines[0].t if lines else None)
    rec.end = lines[-1].t if lines else raw.end
    if raw.error is not None:
        rec.error = raw.error
        rec.end = raw.end
    elif ps.error is not None:
        rec.error, rec.end = ps.error, ps.error_t
    elif not lines:
        rec.error = "stream ended without a token"
    return rec
