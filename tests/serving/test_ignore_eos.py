"""Fixed-length generation on the local server: ignore_eos runs to max_new_tokens whatever the
model says. The random demo model seldom picks EOS by itself, so the test makes the token it
picks first (greedy) the end-of-sequence token: without ignore_eos generation then stops at
once; with it, it runs to the end."""

from __future__ import annotations

import asyncio

import pytest

from lmiflow.serving.schema import chat_sampling, lmi_sampling, parse_invocation

pytestmark = pytest.mark.slow


def test_request_forms_carry_ignore_eos():
    lmi = parse_invocation({"inputs": "x", "parameters": {"ignore_eos_token": True}})
    assert lmi_sampling(lmi.parameters, 100).ignore_eos
    assert not lmi_sampling(parse_invocation({"inputs": "x"}).parameters, 100).ignore_eos
    chat = parse_invocation({"messages": [{"role": "user", "content": "x"}], "ignore_eos": True,
                             "stream_options": {"include_usage": True}})
    assert chat_sampling(chat, 100).ignore_eos


def test_ignore_eos_generates_exactly_max_new_tokens(tmp_path_factory):
    pytest.importorskip("torch")
    from lmiflow.serving.engine import FINISH_EOS, FINISH_LENGTH, Engine, EngineOptions, Sampling
    from tests.session_files import session_demo_model

    engine = Engine(EngineOptions(model_path=str(session_demo_model(tmp_path_factory)),
                                  dtype="fp32", max_rolling_batch_size=2, max_model_len=64))
    try:
        ids = engine.encode("Once upon a time")

        async def run(n: int, sampling: Sampling) -> list:
            return [s async for s in engine.generate(ids, n, sampling)]

        first = asyncio.run(run(1, Sampling()))[0].token_id
        engine.eos_ids = {first}  # greedy decoding now "ends" at its first token
        stopped = asyncio.run(run(6, Sampling()))
        assert [s.token_id for s in stopped] == [first]
        assert stopped[-1].finish_reason == FINISH_EOS
        full = asyncio.run(run(6, Sampling(ignore_eos=True)))
        assert len(full) == 6 and full[0].token_id == first
        assert full[-1].finish_reason == FINISH_LENGTH
    finally:
        engine.shutdown()
