"""A tiny word-level tokenizer (one token per word, BOS added, a chat template), saved like a
model directory: counts in tests are then words, which a reader can check by eye."""

from __future__ import annotations

import pytest

from lmiflow.bench.prompts import _WORDS

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} "
                 "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="session")
def word_tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<s>", "</s>", "<user>", "<assistant>", "tok", "hello", *_WORDS]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="[UNK]")
    fast.chat_template = CHAT_TEMPLATE
    d = tmp_path_factory.mktemp("word-tokenizer")
    fast.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def word_tokenizer(word_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(word_tokenizer_dir))
