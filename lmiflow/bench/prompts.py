"""Prompts for a benchmark: synthetic ones of an exact length in the model's tokens, or a
user's own traffic replayed from a JSONL file.

Lengths are counted the way the server counts what it receives: `inputs` text with the
tokenizer's special tokens (vLLM's completion path and the local server add BOS); chat
messages rendered by the model's chat template and tokenized without adding special tokens
again (vLLM's ChatCompletionRequest default, and the local server's encode_chat).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmiflow.bench.tokens import encode

# Short common English words: nearly all are one token (with their leading space) in BPE and
# SentencePiece vocabularies, so N words approximate N tokens when no tokenizer is given.
_WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their can has more when will "
    "would if so out up no what about into than them only other new some time could these "
    "two may then do first any my now such like our over man me even most made after also "
    "did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men "
    "work long get here between both life being under never day same another know while"
).split()
MAX_PROMPTS_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Prompt:
    """One request's input: text (`inputs`, completions) or chat messages."""

    text: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) pairs
    input_tokens: int | None = None  # as the server will count them; None when unknown

    def message_dicts(self) -> list[dict[str, str]] | None:
        if self.messages is None:
            return None
        return [{"role": r, "content": c} for r, c in self.messages]


class PromptsFileError(ValueError):
    """A prompts file that cannot be replayed; the message names the line."""


def count_input_tokens(tokenizer: Any, prompt: Prompt) -> int | None:
    if tokenizer is None:
        return None
    if prompt.messages is None:
        return len(encode(tokenizer, prompt.text or "", special=True))
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template(prompt.message_dicts(), tokenize=False,
                                         add_generation_prompt=True)
    return len(encode(tokenizer, text))


def synthetic_prompts(
    n: int, input_tokens: int, tokenizer: Any | None = None, *, chat: bool = False,
    seed: int = 0,
) -> list[Prompt]:
    """n distinct prompts (distinct so that a prefix cache does not turn the benchmark into a
    cache test). With a tokenizer each is input_tokens long exactly as the server counts it
    (or as close as the tokenizer allows: `input_tokens` then holds the real count); without
    one, input_tokens words approximate it and the count is unknown."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(input_tokens + 16)]
        if tokenizer is None:
            text = " ".join(words[:input_tokens])
            out.append(Prompt(messages=(("user", text),)) if chat else Prompt(text=text))
        else:
            out.append(_exact(tokenizer, " ".join(words), input_tokens, chat))
    return out


def _exact(tokenizer: Any, source: str, target: int, chat: bool) -> Prompt:
    """Cut source (in tokens) until the whole request counts `target` tokens: the cut moves by
    the difference each round, since templates and merges at the cut shift the count."""
    ids = encode(tokenizer, source)
    while len(ids) < target + 8:  # long targets: repeat the text
        ids += ids
    k = target
    best: Prompt | None = None
    for _ in range(16):
        text = tokenizer.decode(ids[:k])
        prompt = Prompt(messages=(("user", text),)) if chat else Prompt(text=text)
        n = count_input_tokens(tokenizer, prompt)
        if n is None:  # no chat template: the count is unknown
            return prompt
        prompt = Prompt(text=prompt.text, messages=prompt.messages, input_tokens=n)
        if best is None or abs(n - target) < abs((best.input_tokens or 0) - target):
            best = prompt
        if n == target:
            return prompt
        k = max(0, min(len(ids), k + target - n))
    assert best is not None
    return best


def load_prompts_file(path: str | Path, tokenizer: Any | None = None) -> list[Prompt]:
    """A JSONL file of prompts to replay: per line a JSON string, {"prompt": "..."} (or
    "inputs"/"text"), or {"messages": [{"role", "content"}, ...]}. Blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise PromptsFileError(f"{path} is not a file")
    if p.stat().st_size > MAX_PROMPTS_FILE_BYTES:
        raise PromptsFileError(f"{path} is over {MAX_PROMPTS_FILE_BYTES >> 20} MiB")
    prompts = []
    with p.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise PromptsFileError(f"{path} line {i}: not JSON") from None
            prompt = _prompt_from(obj, f"{path} line {i}")
            prompts.append(Prompt(prompt.text, prompt.messages,
                                  count_input_tokens(tokenizer, prompt)))
    if not prompts:
        raise PromptsFileError(f"{path} holds no prompts")
    return prompts


def _prompt_from(obj: Any, where: str) -> Prompt:
    if isinstance(obj, str):
        return Prompt(text=obj)
    if not isinstance(obj, dict):
        raise PromptsFileError(f"{where}: expected a string or an object")
    for key in ("prompt", "inputs", "text"):
        if isinstance(obj.get(key), str):
            return Prompt(text=obj[key])
    msgs = obj.get("messages")
    if isinstance(msgs, list) and msgs:
        pairs = []
        for m in msgs:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise PromptsFileError(f"{where}: each message needs string role and content")
            pairs.append((m["role"], m["content"]))
        return Prompt(messages=tuple(pairs))
    raise PromptsFileError(f"{where}: needs \"prompt\" (text) or \"messages\" (chat)")


def for_api(prompts: list[Prompt], chat: bool, tokenizer: Any | None) -> list[Prompt]:
    """Text prompts become one user message for a chat API; chat prompts sent as text are
    rendered with the chat template (or joined when the tokenizer has none)."""
    out = []
    for p in prompts:
        if chat and p.messages is None:
            q = Prompt(messages=(("user", p.text or ""),))
        elif not chat and p.messages is not None:
            if tokenizer is not None and getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template(p.message_dicts(), tokenize=False,
                                                     add_generation_prompt=True)
            else:
                text = "\n".join(c for _, c in p.messages)
            q = Prompt(text=text)
        else:
            out.append(p)
            continue
        out.append(Prompt(q.text, q.messages, count_input_tokens(tokenizer, q)))
    return out
