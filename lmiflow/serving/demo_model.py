"""A tiny random-weight Llama in Hugging Face format, built offline in seconds.

Why: the local target, its tests and the e2e flow need a *real* model directory (config.json,
safetensors, tokenizer with a chat template) that loads with transformers and serves through the
same code path as a Hub model, without the Hub and without gigabytes of weights. The weights are
random, so the text it writes is gibberish; everything else (tokenizer, GQA, KV cache, chat
template, streaming) is the real thing.
"""

from __future__ import annotations

import json
from pathlib import Path

# Small built-in corpus for the BPE tokenizer: enough text for a few hundred merges.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A model server answers requests one token at a time.
Large language models predict the next token from the previous ones; a key-value cache keeps the
attention state of every sequence so the next step only computes one new position.
SageMaker endpoints run containers that answer GET /ping and POST /invocations on port 8080.
Continuous batching lets many requests share one forward pass: new sequences join the batch as
soon as others finish, and the GPU stays busy. Throughput grows with concurrency until memory or
compute runs out; latency per token grows a little with every extra sequence in the batch.
Hello, world! How are you today? I am fine, thank you. What is the capital of France? Paris.
Once upon a time there was a little server that wanted to serve the biggest models in the world.
It measured time to first token, time per output token, inter-token latency and end-to-end time.
0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) [ ] { } < > : ; , . ! ? ' " # @ % & _ ~
"""

BOS = "<s>"
EOS = "</s>"
PAD = "<pad>"
SPECIAL_TOKENS = [PAD, BOS, EOS, "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]

# A deliberately simple template: role tags, an end tag per turn, the assistant tag as prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

DEFAULTS = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    # Like Llama: a prompt encoded with special tokens starts with BOS.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BOS} $A",
            pair=f"{BOS} $A {BOS} $B",
            special_tokens=[(BOS, tok.token_to_id(BOS))],
        ),
    ])
    return tok


def build_demo_model(dir: Path, seed: int = 0, **overrides: int) -> Path:
    """Write a tiny Llama (GQA: 4 heads, 2 KV heads) with random weights and a byte-level BPE
    tokenizer to `dir`; returns `dir`. Deterministic for a given seed. `overrides` change the
    config sizes (e.g. num_hidden_layers=4)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown demo-model sizes: {sorted(unknown)}")
    sizes = {**DEFAULTS, **overrides}
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)

    raw = _train_tokenizer(sizes["vocab_size"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=sizes["max_position_embeddings"],
    )
    tokenizer.save_pretrained(dir)

    config = LlamaConfig(
        **sizes,
        bos_token_id=raw.token_to_id(BOS),
        eos_token_id=raw.token_to_id(EOS),
        pad_token_id=raw.token_to_id(PAD),
        tie_word_embeddings=True,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars on every build
    model.save_pretrained(dir)
    # Older readers (transformers 4.x, vLLM) look for the template and the class here.
    tok_cfg_path = dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg.setdefault("chat_template", CHAT_TEMPLATE)
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (dir / "lmiflow-demo.json").write_text(json.dumps({"seed": seed, **sizes}) + "\n")
    return dir


def ensure_demo_model(dir: Path, seed: int = 0) -> Path:
    """build_demo_model unless `dir` already holds one built with this seed. Safe when several
    processes (test workers, flow runs) ask at once: they build under a file lock."""
    from filelock import FileLock

    dir = Path(dir)
    dir.parent.mkdir(parents=True, exist_ok=True)
    marker = dir / "lmiflow-demo.json"
    with FileLock(str(dir) + ".lock"):
        try:
            if json.loads(marker.read_text()).get("seed") == seed:
                return dir
        except (OSError, ValueError):
            pass
        return build_demo_model(dir, seed=seed)
