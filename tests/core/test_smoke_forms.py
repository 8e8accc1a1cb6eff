"""The smoke test speaks each request form the benchmark will send."""

from __future__ import annotations

import json

from lmiflow.pipeline import check_smoke_response, smoke_payloads
from lmiflow.spec import parse_spec

SPEC = {"name": "s", "model": {"id": "m"},
        "workload": {"max_input_tokens": 64, "max_output_tokens": 8, "concurrency": 1},
        "smoke_test": {"prompt": "Hi", "max_new_tokens": 3}}


def test_chat_benchmarks_are_smoke_tested_in_both_forms():
    assert [list(p) for p in smoke_payloads(parse_spec(SPEC))] == [["inputs", "parameters"]]
    both = smoke_payloads(parse_spec({**SPEC, "benchmark": {"api": "messages"}}))
    assert both[1] == {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def test_chat_completion_answers_are_checked():
    ok = {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"},
         "finish_reason": "length"}]}
    assert check_smoke_response(json.dumps(ok).encode()) == (True, "Hello", None)
    broken = {"choices": [{"index": 0, "message": {"role": "assistant"}}]}
    passed, _, why = check_smoke_response(json.dumps(broken).encode())
    assert not passed and "message.content" in why
