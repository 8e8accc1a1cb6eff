"""How many tokens a streamed answer holds, line by line, and where the count came from.

A line is not a token: LMI's vLLM service merges the deltas produced between two writes into
one line (bench.apis). The rule, most exact source first:

1. `server-per-line`: the server gave a running completion-token count on every line (vLLM's
   `continuous_usage_stats`): each line holds the difference.
2. `stream`: the server's final count equals the number of token lines: one token each.
3. `tokenizer`: the model's own tokenizer re-reads the streamed text; each token belongs to
   the line where its last character arrived, and a token line holds at least one (a special
   token such as EOS streams as empty text). The server's count, if any, is the cross-check.
4. `server`: no tokenizer; the server's final count, spread over the lines by text length.
5. `lines`: nothing else: one token per line, a lower bound when lines merge tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmiflow.bench.apis import ParsedStream


def count_tokens(ps: ParsedStream, tokenizer: Any | None) -> tuple[list[int], str]:
    """Tokens per token line of the stream (same order as ps.lines' token lines), and the
    source (the names in this module's docstring) the counts came from."""
    lines = [ln for ln in ps.lines if ln.token]
    if not lines:
        return [], "lines"
    usage = [ln.usage_tokens for ln in lines]
    if all(u is not None for u in usage) and usage == sorted(usage) and usage[0] >= 1:
        prev = 0
        counts = []
        for u in usage:
            counts.append(int(u) - prev)  # type: ignore[operator]
            prev = int(u)  # type: ignore[arg-type]
        if all(c >= 1 for c in counts[1:]) and counts[0] >= 1:
            return counts, "server-per-line"
    reported = ps.reported_output_tokens
    if reported is not None and reported == len(lines):
        return [1] * len(lines), "stream"
    if tokenizer is not None:
        return per_line_counts(tokenizer, [ln.text for ln in lines]), "tokenizer"
    if reported is not None and reported > len(lines):
        return _spread(reported, [ln.text for ln in lines]), "server"
    return [1] * len(lines), "lines"


def per_line_counts(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Tokens of the whole text assigned to lines by where each token ends (fast tokenizers'
    offsets; slow ones: the growth of the prefix's token count), at least one per line."""
    full = "".join(texts)
    ends = []
    pos = 0
    for text in texts:
        pos += len(text)
        ends.append(pos)
    counts = [0] * len(texts)
    offsets = _offsets(tokenizer, full)
    if offsets is not None:
        line = 0
        for _start, end in offsets:
            while line < len(ends) - 1 and end > ends[line]:
                line += 1
            counts[line] += 1
    else:
        prev = 0
        for i, end in enumerate(ends):
            n = len(encode(tokenizer, full[:end]))
            counts[i], prev = max(0, n - prev), max(n, prev)
    return [max(1, c) for c in counts]


def _offsets(tokenizer: Any, text: str) -> list[tuple[int, int]] | None:
    if not getattr(tokenizer, "is_fast", False):
        return None
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(int(a), int(b)) for a, b in enc["offset_mapping"] if b > a]


def _spread(total: int, texts: Sequence[str]) -> list[int]:
    """total tokens over len(texts) lines: one each, the rest in proportion to text length."""
    counts = [1] * len(texts)
    extra = total - len(texts)
    weights = [max(1, len(t)) for t in texts]
    whole = sum(weights)
    shares = [extra * w / whole for w in weights]
    for i, s in enumerate(shares):
        counts[i] += int(s)
    left = total - sum(counts)
    for i in sorted(range(len(texts)), key=lambda i: shares[i] - int(shares[i]), reverse=True):
        if left <= 0:
            break
        counts[i] += 1
        left -= 1
    return counts


def encode(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=special))
    except TypeError:  # tokenizers without the keyword
        return list(tokenizer.encode(text))


# --- finding the model's tokenizer -----------------------------------------------------------

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja",
    "config.json", "generation_config.json",
)


class TokenizerNotFound(LookupError):
    """No tokenizer where the model lives (the message says where lmiflow looked)."""


def load_tokenizer(source: str | Path, *, revision: str | None = None,
                   trust_remote_code: bool = False, allow_download: bool = True) -> Any:
    """A tokenizer from a local directory, or a Hub id: the local Hub cache first, the Hub
    itself only when allow_download."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    path = Path(source)
    if path.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(path), **kwargs)
        except Exception as exc:  # a directory without a usable tokenizer
            raise TokenizerNotFound(f"no tokenizer in {path}: {type(exc).__name__}: "
                                    f"{str(exc)[:160]}") from None
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True, **kwargs)
    except Exception as cached_exc:
        if not allow_download:
            raise TokenizerNotFound(f"{source} is not in the Hugging Face cache "
                                    f"({type(cached_exc).__name__})") from None
    try:
        return AutoTokenizer.from_pretrained(str(source), **kwargs)
    except Exception as exc:
        raise TokenizerNotFound(f"cannot load the tokenizer of {source}: "
                                f"{type(exc).__name__}: {str(exc)[:160]}") from None
