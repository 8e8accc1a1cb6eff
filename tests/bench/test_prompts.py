"""Prompts of an exact length in the model's tokens, and replayed prompt files."""

from __future__ import annotations

import json

import pytest

from lmiflow.bench.prompts import (
    Prompt,
    PromptsFileError,
    count_input_tokens,
    for_api,
    load_prompts_file,
    synthetic_prompts,
)


def test_synthetic_prompts_are_exact_in_the_models_tokens(word_tokenizer):
    prompts = synthetic_prompts(4, 40, word_tokenizer, seed=1)
    assert len({p.text for p in prompts}) == 4  # distinct: no prefix-cache shortcut
    for p in prompts:
        # as the server counts them: BOS + 39 words
        assert p.input_tokens == 40 == len(word_tokenizer(p.text)["input_ids"])
        assert len(p.text.split()) == 39


def test_chat_prompts_count_the_template(word_tokenizer):
    for p in synthetic_prompts(2, 30, word_tokenizer, chat=True):
        rendered = word_tokenizer.apply_chat_template(p.message_dicts(), tokenize=False,
                                                      add_generation_prompt=True)
        n = len(word_tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert p.input_tokens == n == 30


def test_without_a_tokenizer_words_approximate_and_the_count_is_unknown():
    prompts = synthetic_prompts(3, 25)
    assert all(len(p.text.split()) == 25 and p.input_tokens is None for p in prompts)


def test_prompts_file_forms_and_errors(tmp_path, word_tokenizer):
    f = tmp_path / "p.jsonl"
    f.write_text('"the people"\n\n{"prompt": "hello tok tok"}\n'
                 + json.dumps({"messages": [{"role": "user", "content": "hello"}]}) + "\n")
    ps = load_prompts_file(f, word_tokenizer)
    assert [p.text for p in ps] == ["the people", "hello tok tok", None]
    assert ps[2].messages == (("user", "hello"),)
    assert [p.input_tokens for p in ps[:2]] == [3, 4]  # BOS + words
    for text, where in [("{oops\n", "line 1: not JSON"), ('{"x": 1}\n', "line 1: needs"),
                        ('"a"\n{"messages": [{"role": 1}]}\n', "line 2: each message"),
                        ("\n", "holds no prompts")]:
        f.write_text(text)
        with pytest.raises(PromptsFileError, match=where):
            load_prompts_file(f)
    with pytest.raises(PromptsFileError, match="not a file"):
        load_prompts_file(tmp_path / "missing.jsonl")


def test_text_prompts_become_one_user_message_for_chat(word_tokenizer):
    chat = for_api([Prompt(text="hello tok")], chat=True, tokenizer=word_tokenizer)
    assert chat[0].messages == (("user", "hello tok"),)
    assert chat[0].input_tokens == count_input_tokens(word_tokenizer, chat[0])
    text = for_api([Prompt(messages=(("user", "hello"),))], chat=False, tokenizer=None)
    assert text[0].text == "hello"
