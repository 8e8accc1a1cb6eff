"""Request bodies and stream parsing for each API, on hand-written streams."""

from __future__ import annotations

import json

import pytest

from lmiflow.bench.apis import api_for_url, parse_stream, payload, split_lines


def lines(*objs, sse=False, t0=0.1, dt=0.01):
    """Chunks of one line each, dt apart."""
    out = []
    for i, o in enumerate(objs):
        data = o if isinstance(o, bytes) else json.dumps(o).encode()
        out.append((t0 + i * dt, (b"data: " + data + b"\n\n") if sse else data + b"\n"))
    return out


def test_lmi_inputs_payload_is_greedy_seeded_and_fixed_length():
    p = payload("inputs", text="hi", messages=None, max_new_tokens=7,
                fixed_length="ignore_eos_token", seed=3)
    assert p == {"inputs": "hi", "stream": True, "parameters": {
        "max_new_tokens": 7, "details": True, "do_sample": False, "seed": 3,
        "ignore_eos_token": True}}
    # TensorRT-LLM's fallback: min_length = the output length
    p = payload("inputs", text="hi", messages=None, max_new_tokens=7, fixed_length="min_length",
                seed=None)
    assert p["parameters"]["min_length"] == 7 and "seed" not in p["parameters"]
    assert "ignore_eos_token" not in p["parameters"]


def test_chat_and_openai_payloads():
    msgs = [{"role": "user", "content": "hi"}]
    lmi_chat = payload("messages", text=None, messages=msgs, max_new_tokens=5,
                       fixed_length="ignore_eos", seed=1)
    assert lmi_chat == {"messages": msgs, "max_tokens": 5, "temperature": 0, "stream": True,
                        "stream_options": {"include_usage": True}, "seed": 1,
                        "ignore_eos": True}
    chat = payload("openai-chat", text="hi", messages=None, max_new_tokens=5, fixed_length=None,
                   seed=None, model="m")
    assert chat["messages"] == msgs and chat["model"] == "m" and "ignore_eos" not in chat
    comp = payload("openai-completions", text="hi", messages=None, max_new_tokens=5,
                   fixed_length=None, seed=None, model="m")
    assert comp["prompt"] == "hi" and "messages" not in comp


@pytest.mark.parametrize(("path", "api"), [
    ("/invocations", "inputs"), ("/v1/chat/completions", "openai-chat"),
    ("/v1/completions/", "openai-completions"), ("/", "inputs"),
])
def test_api_for_url(path, api):
    assert api_for_url(path) == api


def test_split_lines_stamps_each_line_with_the_chunk_that_completed_it():
    chunks = [(1.0, b'{"a":'), (2.0, b'1}\n{"b":2}\n{"c"'), (3.0, b":3}")]
    assert split_lines(chunks) == [(2.0, b'{"a":1}'), (2.0, b'{"b":2}'), (3.0, b'{"c":3}')]


def test_lmi_stream_with_merged_lines_and_details():
    ps = parse_stream("inputs", lines(
        {"token": {"id": 1, "text": "", "logprob": -1}},  # a special token: empty text
        {"token": {"id": 2, "text": " a b"}},  # two tokens merged into one line
        {"token": {"id": 4, "text": " c"}, "generated_text": " a b c",
         "details": {"finish_reason": "length", "generated_tokens": 5, "input_length": 9}},
    ))
    assert ps.error is None and [ln.text for ln in ps.lines] == ["", " a b", " c"]
    assert all(ln.token for ln in ps.lines)
    assert (ps.reported_output_tokens, ps.reported_input_tokens) == (5, 9)


@pytest.mark.parametrize(("objs", "error"), [
    ([{"token": {"id": 1, "text": "x"}},
      {"token": {"id": 2, "text": "y"}, "details": {"finish_reason": "error"}}],
     "finish_reason=error"),
    ([{"token": {"id": -1, "text": "", "log_prob": -1, "special_token": True},
       "generated_text": "", "details": {"finish_reason": "error"}}], "finish_reason=error"),
    ([{"error": "CUDA out of memory", "code": 500}], "server error"),
    ([b"not json"], "unparsable"),
])
def test_lmi_stream_errors(objs, error):
    ps = parse_stream("inputs", lines(*objs))
    assert ps.error is not None and error in ps.error


def test_openai_chat_sse_role_chunk_usage_and_done():
    ps = parse_stream("openai-chat", lines(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo there"}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}},
        b"[DONE]", {"choices": [{"index": 0, "delta": {"content": "after done"}}]},
        sse=True))
    assert [ln.text for ln in ps.lines] == ["Hel", "lo there"]  # no role-only line, no text
    assert (ps.reported_output_tokens, ps.reported_input_tokens) == (3, 4)
    assert ps.error is None


def test_openai_running_usage_per_chunk_and_completions_text():
    ps = parse_stream("openai-completions", lines(
        {"choices": [{"index": 0, "text": " a b"}], "usage": {"completion_tokens": 2}},
        {"choices": [{"index": 0, "text": " c"}], "usage": {"completion_tokens": 3}},
        sse=True))
    assert [(ln.text, ln.usage_tokens) for ln in ps.lines] == [(" a b", 2), (" c", 3)]


def test_openai_error_object_and_lmi_chat_lines_without_sse():
    ps = parse_stream("openai-chat", lines({"object": "error", "message": "too long",
                                            "code": 400}))
    assert "too long" in ps.error
    ps = parse_stream("messages", lines(  # LMI: chat chunks as JSON lines
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "x"}}]}))
    assert [ln.text for ln in ps.lines] == ["x"]
