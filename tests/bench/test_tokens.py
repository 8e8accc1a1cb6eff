"""Token counts per streamed line, and TPOT/ITL from them, when lines carry several tokens.

The word tokenizer (conftest) makes one token of each word, so the expected counts below are
word counts, checked by eye."""

from __future__ import annotations

import json

import pytest

from lmiflow.bench.apis import ParsedStream, StreamLine
from lmiflow.bench.http import RawResponse
from lmiflow.bench.metrics import compute_level, itl_s, tpot_s
from lmiflow.bench.records import to_record
from lmiflow.bench.tokens import count_tokens, per_line_counts


def lmi_raw(texts, times, reported=None, start=0.0):
    chunks = []
    for i, (text, t) in enumerate(zip(texts, times, strict=True)):
        line = {"token": {"id": i, "text": text}}
        if i == len(texts) - 1 and reported is not None:
            line["details"] = {"finish_reason": "length", "generated_tokens": reported}
        chunks.append((t, json.dumps(line).encode() + b"\n"))
    return RawResponse(start=start, status=200, chunks=chunks, end=times[-1])


def test_several_tokens_per_line_give_the_right_counts_and_tpot(word_tokenizer):
    # LMI's vLLM service: 10 tokens in 4 lines; it reports completion_tokens + 1 = 11.
    texts = [" tok", " tok tok tok", " tok tok", " tok tok tok tok"]
    times = [0.100, 0.130, 0.150, 0.190]  # first line at TTFT 100 ms, last at E2E 190 ms
    rec = to_record(lmi_raw(texts, times, reported=11), "inputs", word_tokenizer)
    assert rec.ok and rec.token_source == "tokenizer"
    assert rec.chunk_tokens == [1, 3, 2, 4] and rec.output_tokens == 10
    assert tpot_s(rec) == pytest.approx((0.190 - 0.100) / 9)  # per token, not per line (30 ms)
    # ITL: each line's gap spread over its tokens; the mean ITL equals TPOT.
    assert itl_s(rec) == pytest.approx([0.010] * 3 + [0.010] * 2 + [0.010] * 4)
    lv = compute_level([rec], 1)
    assert lv.output_tokens == 10 and lv.token_sources == {"tokenizer": 1}
    assert lv.token_count_differences == {"+1": 1} and lv.token_count_mismatches == 1
    assert lv.chunk_itl_ms.p50 == pytest.approx(30.0)  # (30, 20, 40 ms) unspread


def test_without_tokenizer_lines_undercount_and_the_server_count_spreads(word_tokenizer):
    texts = [" tok", " tok tok tok", " tok tok"]
    times = [0.1, 0.2, 0.3]
    rec = to_record(lmi_raw(texts, times, reported=6), "inputs", None)
    assert rec.token_source == "server" and rec.output_tokens == 6
    assert sum(rec.chunk_tokens) == 6 and all(c >= 1 for c in rec.chunk_tokens)
    rec = to_record(lmi_raw(texts, times), "inputs", None)
    assert rec.token_source == "lines" and rec.output_tokens == 3  # a lower bound, labelled


def test_one_token_per_line_confirmed_by_the_server_needs_no_tokenizer(word_tokenizer):
    # A special token (EOS under ignore_eos) streams as empty text: it still counts.
    texts = [" tok", "", " tok", " tok"]
    rec = to_record(lmi_raw(texts, [0.1, 0.2, 0.3, 0.4], reported=4), "inputs", word_tokenizer)
    assert rec.token_source == "stream" and rec.chunk_tokens == [1, 1, 1, 1]


def test_running_usage_counts_per_line():
    ps = ParsedStream(lines=[StreamLine(0.1, "a b", True, 2), StreamLine(0.2, "c", True, 3),
                             StreamLine(0.3, "d e f", True, 6)], reported_output_tokens=6)
    assert count_tokens(ps, None) == ([2, 1, 3], "server-per-line")


def test_tokens_belong_to_the_line_their_last_character_arrived_in(word_tokenizer):
    # The model generated " peo" and "ple" as two tokens (a line holds whole tokens);
    # re-tokenizing merges them into "people", which counts in the line where it ends, and
    # the line that held " peo" still stands for the one token it carried: 5 in all.
    assert per_line_counts(word_tokenizer, [" the", " peo", "ple is", " one"]) == [1, 1, 2, 1]
