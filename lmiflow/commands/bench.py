"""`lmiflow bench`: benchmark an LMI endpoint (URL or named) or an OpenAI-compatible server."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
from typing import Any

from lmiflow.bench.apis import APIS
from lmiflow.bench.formulas import FORMULAS
from lmiflow.errors import UserInputError

_HELP_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "chunk_itl_ms", "e2e_ms", "output_tokens",
                 "output_tokens_per_s", "error_rate", "goodput", "usd_per_1m_output_tokens",
                 "percentiles")
EPILOG = "metrics:\n" + "\n".join(
    textwrap.fill(FORMULAS[k], 78, initial_indent="  ", subsequent_indent="      ")
    for k in _HELP_METRICS
) + (
    "\n\ngates (--gate, repeatable): METRIC[:STAT]OP THRESHOLD[@CONCURRENCY], e.g.\n"
    "  --gate 'ttft_ms:p95<=500' --gate 'error_rate<=0.01' --gate 'tpot_ms:p50<50@8'\n"
    "  latency metrics take mean|p50|p90|p95|p99; others are one value per level.\n"
    "  Latency gates also define goodput. Exit 1 when a gate fails."
)
_GATE_RE = re.compile(
    r"\s*(?P<metric>[a-z_0-9]+)(?::(?P<stat>[a-z0-9]+))?\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<threshold>[-+0-9.eE]+)\s*(?:@\s*(?P<conc>\d+))?\s*"
)
DEFAULT_INPUT_TOKENS, DEFAULT_MAX_NEW_TOKENS = 128, 64


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="Benchmark an endpoint: TTFT, TPOT, ITL, E2E, tokens/s, cost, per level.",
        description=textwrap.fill(
            "Benchmark an endpoint that speaks the LMI (DJL Serving) contract, by URL (its "
            "/invocations) or by name on a target, or an OpenAI-compatible server "
            "(/v1/chat/completions, /v1/completions). Every request streams; its tokens are "
            "counted with the model's tokenizer; warm-up requests are excluded.", 78),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="An /invocations URL, or an OpenAI-compatible "
                     "/v1/chat/completions or /v1/completions URL (http or https).")
    src.add_argument("--endpoint", help="A named endpoint on --target: its model's tokenizer "
                     "and max_model_len set the defaults.")
    p.add_argument("--target", default="local", help="Target of --endpoint: local (default) "
                   "or sagemaker.")
    p.add_argument("--region", default=None,
                   help="AWS region of a sagemaker --endpoint (default: AWS_REGION).")
    p.add_argument("--api", choices=APIS, default=None,
                   help="Request form: LMI inputs (default for /invocations) or messages "
                   "(chat), or OpenAI's (default for /v1/... URLs).")
    p.add_argument("--model", default=None, help="OpenAI APIs: the model field (default: the "
                   "first model the server lists).")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="Extra HTTP header for --url (e.g. Authorization); never printed.")
    p.add_argument("--concurrency", default=None,
                   help="Closed-loop levels, e.g. 1,8,32 (default 1 unless --rate).")
    p.add_argument("--rate", default=None, help="Open-loop levels: Poisson arrival rates in "
                   "requests/s, e.g. 0.5,2 (in-flight cap: --max-concurrency).")
    p.add_argument("--max-concurrency", type=int, default=256,
                   help="Open loop: most requests in flight (default 256).")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="Open loop: stop sending arrivals after this long.")
    p.add_argument("--requests", type=int, default=16, help="Measured requests per level.")
    p.add_argument("--warmup", type=int, default=2,
                   help="Warm-up requests per level, sent first and excluded (default 2; "
                   "at least the concurrency measures a steady state).")
    p.add_argument("--repeats", type=int, default=1,
                   help="Run the sweep this many times (levels interleaved).")
    p.add_argument("--ramp-up", type=float, default=0.0, metavar="SECONDS",
                   help="Closed loop: start the concurrent workers evenly over this time, so "
                   "requests do not move in lock-step waves (about one E2E is good).")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="Output tokens per request (default 64, less if the endpoint's "
                   "max_model_len needs it).")
    p.add_argument("--input-tokens", type=int, default=None,
                   help="Prompt length in the model's tokens (default 128, less if the "
                   "endpoint's max_model_len needs it).")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="Replay prompts from a JSONL file (one string, {\"prompt\": ...} or "
                   "{\"messages\": [...]} per line) instead of synthetic ones.")
    p.add_argument("--tokenizer", default=None, help="The model's tokenizer (a directory or "
                   "Hub id) when lmiflow cannot find it: exact prompt lengths and token counts.")
    p.add_argument("--fixed-length", action=argparse.BooleanOptionalAction, default=True,
                   help="Greedy, seeded, and every output exactly --max-new-tokens long "
                   "(ignore EOS; default on).")
    p.add_argument("--timeout", type=float, default=120.0, help="Per-request timeout, seconds.")
    p.add_argument("--usd-per-hour", type=float, default=None,
                   help="Instance price, for $ per 1M output tokens.")
    p.add_argument("--instances", type=int, default=1, help="Instances behind the endpoint.")
    p.add_argument("--gate", action="append", default=[], metavar="GATE",
                   help="An SLO gate (see below); repeatable.")
    p.add_argument("--processes", type=int, default=None,
                   help="Load-generator processes for --url (default: one per 64 streams).")
    p.add_argument("--seed", type=int, default=0, help="Prompt, arrival and sampling seed.")
    p.add_argument("--json", action="store_true", help="Print one JSON object.")
    p.set_defaults(run=run)


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserInputError(flag, f"must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 or v > 4096 for v in values):
        raise UserInputError(flag, "each level must be between 1 and 4096")
    return sorted(set(values))


def _float_list(flag: str, text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserInputError(flag, f"must be comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v < 1e6 for v in values):
        raise UserInputError(flag, "each rate must be a positive number of requests/s")
    return sorted(set(values))


def parse_gate(text: str) -> Any:
    from pydantic import ValidationError

    from lmiflow.bench.gate_spec import LATENCY_METRICS, GateSpec

    m = _GATE_RE.fullmatch(text)
    if not m:
        raise UserInputError("--gate", f"{text!r} is not METRIC[:STAT]OP THRESHOLD[@CONCURRENCY]")
    stat = m["stat"] or ("p95" if m["metric"] in LATENCY_METRICS else "value")
    try:
        return GateSpec(metric=m["metric"], stat=stat, op=m["op"],
                        threshold=float(m["threshold"]),
                        concurrency=int(m["conc"]) if m["conc"] else None)
    except (ValidationError, ValueError) as exc:
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise UserInputError("--gate", f"{text!r}: {reason}") from None


def _check_url(url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserInputError("--url", "must be an http(s) URL such as "
                             "http://127.0.0.1:8080/invocations")


def _headers(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", name.strip()) or "\n" in value:
            raise UserInputError("--header", "must be 'Name: value'")
        out[name.strip()] = value.strip()
    return out


def fit_lengths(input_tokens: int | None, max_new_tokens: int | None,
                max_model_len: int | None) -> tuple[int, int]:
    """Defaults that fit the endpoint's context (prompt + output ≤ max_model_len), or exit 2
    naming the flag that cannot fit."""
    if max_model_len is None:
        return (DEFAULT_INPUT_TOKENS if input_tokens is None else input_tokens,
                DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens)
    if max_new_tokens is None:
        room = max_model_len - (1 if input_tokens is None else input_tokens)
        max_new_tokens = max(1, min(DEFAULT_MAX_NEW_TOKENS, max_model_len // 4, room))
    if input_tokens is None:
        input_tokens = max(1, min(DEFAULT_INPUT_TOKENS, max_model_len - max_new_tokens))
    if input_tokens + max_new_tokens > max_model_len:
        flag = "--max-new-tokens" if max_new_tokens >= max_model_len else "--input-tokens"
        raise UserInputError(flag, f"{input_tokens} input + {max_new_tokens} new tokens exceed "
                             f"the endpoint's max_model_len {max_model_len}")
    return input_tokens, max_new_tokens


def _load_config(args: argparse.Namespace, api: str, model: str | None,
                 input_tokens: int, max_new_tokens: int) -> Any:
    from pydantic import ValidationError

    from lmiflow.bench.loadgen import LoadConfig

    flags = {"requests": "--requests", "warmup": "--warmup", "max_new_tokens":
             "--max-new-tokens", "input_tokens": "--input-tokens", "timeout_s": "--timeout",
             "usd_per_hour": "--usd-per-hour", "instances": "--instances",
             "max_concurrency": "--max-concurrency", "ramp_up_s": "--ramp-up",
             "repeats": "--repeats", "processes": "--processes", "duration_s": "--duration"}
    rates = _float_list("--rate", args.rate) if args.rate else []
    levels = args.concurrency or ("" if rates else "1")
    values = dict(
        concurrency=_int_list("--concurrency", levels) if levels else [], rates=rates,
        max_concurrency=args.max_concurrency, duration_s=args.duration, requests=args.requests,
        warmup=args.warmup, repeats=args.repeats, max_new_tokens=max_new_tokens,
        input_tokens=input_tokens, api=api, model=model, prompts_file=args.prompts,
        fixed_length=args.fixed_length, timeout_s=args.timeout,
        usd_per_hour=args.usd_per_hour, instances=args.instances, seed=args.seed,
        ramp_up_s=args.ramp_up, processes=args.processes,
    )
    try:
        return LoadConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else "config"
        raise UserInputError(flags.get(field, f"--{field}"), err["msg"]) from None


def _target(kind: str, endpoint: str, region: str | None) -> Any:
    try:
        from lmiflow.targets import configured_target
    except ImportError as exc:
        raise UserInputError("--target", f"target support is not available: {exc}") from None
    try:
        target = configured_target(kind, region=region)
    except (ValueError, TypeError) as exc:  # e.g. no region for sagemaker
        raise UserInputError("--target", str(exc)) from None
    if target.describe(endpoint) is None:
        raise UserInputError("--endpoint", f"no endpoint named {endpoint!r} on target {kind}")
    return target


def _model_info(args: argparse.Namespace, api: str, target: Any, headers: dict) -> Any:
    from lmiflow.bench.endpoint_model import ModelInfo, endpoint_model, openai_model
    from lmiflow.bench.tokens import TokenizerNotFound, load_tokenizer

    if target is not None:
        info = endpoint_model(target, args.endpoint)
    elif api.startswith("openai"):
        info = openai_model(args.url, headers=headers)
    else:
        info = ModelInfo()
    if args.tokenizer:
        try:
            info.tokenizer = load_tokenizer(args.tokenizer)
        except TokenizerNotFound as exc:
            raise UserInputError("--tokenizer", str(exc)) from None
        info.tokenizer_source = args.tokenizer
        info.notes = [n for n in info.notes if "tokenizer" not in n]
    elif info.tokenizer is None and not any("tokenizer" in n for n in info.notes):
        info.notes.append("no tokenizer: prompt lengths are approximate (words) and tokens "
                          "are counted from the stream; pass --tokenizer for exact ones")
    return info


def run(args: argparse.Namespace) -> int:
    from lmiflow.bench.apis import api_for_url

    gates = [parse_gate(g) for g in args.gate]
    headers = _headers(args.header)
    if args.url is not None:
        _check_url(args.url)
        if args.target != "local":
            raise UserInputError("--target", "only applies with --endpoint, not --url")
    else:
        if args.target not in ("local", "sagemaker"):
            raise UserInputError("--target", f"must be local or sagemaker, got {args.target!r}")
        if headers:
            raise UserInputError("--header", "only applies with --url")
    from urllib.parse import urlsplit

    api = args.api or (api_for_url(urlsplit(args.url).path) if args.url else "inputs")
    if args.endpoint is not None and api.startswith("openai"):
        raise UserInputError("--api", "a named endpoint takes inputs or messages")
    target = None if args.url is not None else _target(args.target, args.endpoint, args.region)
    info = _model_info(args, api, target, headers)
    input_tokens, max_new = fit_lengths(args.input_tokens, args.max_new_tokens,
                                        info.max_model_len)
    model = args.model or info.model
    if api.startswith("openai") and not model:
        raise UserInputError("--model", "the server lists no model: name one")
    cfg = _load_config(args, api, model, input_tokens, max_new)

    from lmiflow.bench.gates import evaluate
    from lmiflow.bench.loadgen import EndpointRejected, bench_endpoint, bench_url
    from lmiflow.bench.prompts import PromptsFileError

    try:
        with _progress(enabled=sys.stderr.isatty()) as on_progress:
            kw = dict(tokenizer=info.tokenizer, tokenizer_source=info.tokenizer_source,
                      gates=gates, on_progress=on_progress)
            if target is None:
                result = bench_url(args.url, cfg, headers=headers, **kw)
            else:
                result = bench_endpoint(target, args.endpoint, cfg, find_tokenizer=False, **kw)
    except PromptsFileError as exc:
        raise UserInputError("--prompts", str(exc)) from None
    except EndpointRejected as exc:
        raise UserInputError("--url" if args.url else "--endpoint", str(exc)) from None
    result.notes = info.notes + result.notes
    verdict = evaluate(gates, result) if gates else None

    if args.json:
        out = result.model_dump(mode="json")
        if verdict is not None:
            out["verdict"] = verdict.model_dump(mode="json")
        _write(json.dumps(out, indent=2) + "\n")
    else:
        from lmiflow.bench.summary import summary_lines

        _write("\n".join(summary_lines(result, verdict)) + "\n")

    if all(lv.completed == 0 for lv in result.levels):
        example = next((e for lv in result.levels for e in lv.error_examples), "no response")
        print(f"lmiflow: error: no request succeeded ({example})", file=sys.stderr)
        return 1
    return 0 if verdict is None or verdict.passed else 1


def _write(text: str) -> None:
    """stdout that may be a closed pipe (`lmiflow bench --json | head`): stop quietly."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _progress:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar: Any = None
        self.tasks: dict[int, Any] = {}

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        return self.update

    def update(self, level: int, done: int, total: int) -> None:
        if level not in self.tasks:
            self.tasks[level] = self.bar.add_task(f"level {level}", total=total)
        self.bar.update(self.tasks[level], completed=done)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
