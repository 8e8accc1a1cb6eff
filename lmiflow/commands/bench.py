"""`lmiflow bench`: benchmark any LMI-contract URL or a named endpoint of a target."""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from typing import Any

from lmiflow.bench.formulas import FORMULAS
from lmiflow.errors import UserInputError

_HELP_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "output_tokens_per_s",
                 "error_rate", "goodput", "usd_per_1m_output_tokens", "percentiles")
EPILOG = "metrics:\n" + "\n".join(
    textwrap.fill(FORMULAS[k], 92, initial_indent="  ", subsequent_indent="      ")
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


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="Benchmark an endpoint: TTFT, TPOT, ITL, E2E, tokens/s, cost, at each concurrency.",
        description="Benchmark an endpoint that speaks the LMI (DJL Serving) contract, by URL "
        "(its /invocations) or by name on a target. Streams every request and timestamps "
        "each token line; warm-up requests are excluded.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="The endpoint's /invocations URL (http or https).")
    src.add_argument("--endpoint", help="A named endpoint on --target.")
    p.add_argument("--target", default="local", help="Target of --endpoint: local (default) "
                   "or sagemaker.")
    p.add_argument("--region", default=None,
                   help="AWS region of a sagemaker --endpoint (default: AWS_REGION).")
    p.add_argument("--concurrency", default="1", help="Closed-loop levels, e.g. 1,8,32.")
    p.add_argument("--rate", default=None, help="Open loop instead: Poisson arrival rates in "
                   "requests/s, e.g. 0.5,2 (in-flight cap: --max-concurrency).")
    p.add_argument("--max-concurrency", type=int, default=256,
                   help="Open loop: most requests in flight (default 256).")
    p.add_argument("--requests", type=int, default=16, help="Measured requests per level.")
    p.add_argument("--warmup", type=int, default=2,
                   help="Warm-up requests per level, sent first and excluded (default 2; "
                   "at least the concurrency measures a steady state).")
    p.add_argument("--ramp-up", type=float, default=0.0, metavar="SECONDS",
                   help="Closed loop: start the concurrent workers evenly over this time, so "
                   "requests do not move in lock-step waves (about one E2E is good).")
    p.add_argument("--max-new-tokens", type=int, default=64, help="Output tokens per request.")
    p.add_argument("--input-tokens", type=int, default=128, help="Prompt length in tokens.")
    p.add_argument("--tokenizer", default=None, help="Tokenizer (local path) for exact prompt "
                   "lengths; without it a word count approximates tokens.")
    p.add_argument("--ignore-eos", action="store_true",
                   help="Send parameters.ignore_eos_token (LMI/vLLM): every output is "
                   "--max-new-tokens long instead of ending at EOS.")
    p.add_argument("--timeout", type=float, default=120.0, help="Per-request timeout, seconds.")
    p.add_argument("--usd-per-hour", type=float, default=None,
                   help="Instance price, for $ per 1M output tokens.")
    p.add_argument("--instances", type=int, default=1, help="Instances behind the endpoint.")
    p.add_argument("--gate", action="append", default=[], metavar="GATE",
                   help="An SLO gate (see below); repeatable.")
    p.add_argument("--http-client", choices=("auto", "aiohttp", "httpx"), default="auto",
                   help="--url client: aiohttp when installed (auto, faster), or httpx.")
    p.add_argument("--seed", type=int, default=0, help="Prompt and arrival seed.")
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
    if not values or any(not v > 0 for v in values):
        raise UserInputError(flag, "each rate must be a positive number of requests/s")
    return values


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


def _load_config(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from lmiflow.bench.loadgen import LoadConfig

    flags = {"requests": "--requests", "warmup": "--warmup", "max_new_tokens":
             "--max-new-tokens", "input_tokens": "--input-tokens", "timeout_s": "--timeout",
             "usd_per_hour": "--usd-per-hour", "instances": "--instances",
             "max_concurrency": "--max-concurrency", "ramp_up_s": "--ramp-up"}
    values = dict(
        concurrency=_int_list("--concurrency", args.concurrency),
        rates=_float_list("--rate", args.rate) if args.rate else None,
        max_concurrency=args.max_concurrency, requests=args.requests, warmup=args.warmup,
        max_new_tokens=args.max_new_tokens, input_tokens=args.input_tokens,
        timeout_s=args.timeout, ignore_eos=args.ignore_eos, usd_per_hour=args.usd_per_hour,
        instances=args.instances, seed=args.seed, http_client=args.http_client,
        ramp_up_s=args.ramp_up,
    )
    try:
        return LoadConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else "config"
        raise UserInputError(flags.get(field, f"--{field}"), err["msg"]) from None


def _load_tokenizer(path: str) -> Any:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # any failure to load is the user's path to fix
        raise UserInputError("--tokenizer", f"cannot load a tokenizer from {path!r}: "
                             f"{type(exc).__name__}: {str(exc)[:200]}") from None


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


def run(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    gates = [parse_gate(g) for g in args.gate]
    if args.url is not None:
        _check_url(args.url)
        if args.target != "local":
            raise UserInputError("--target", "only applies with --endpoint, not --url")
    elif args.target not in ("local", "sagemaker"):
        raise UserInputError("--target", f"must be local or sagemaker, got {args.target!r}")
    if args.http_client == "aiohttp":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            raise UserInputError("--http-client", "aiohttp is not installed") from None
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None

    from lmiflow.bench.gates import evaluate
    from lmiflow.bench.loadgen import bench_endpoint, bench_url

    target = None if args.url is not None else _target(args.target, args.endpoint, args.region)
    with _progress(enabled=sys.stderr.isatty()) as on_progress:
        if target is None:
            result = bench_url(args.url, cfg, tokenizer=tokenizer, gates=gates,
                               on_progress=on_progress)
        else:
            result = bench_endpoint(target, args.endpoint, cfg, tokenizer=tokenizer,
                                    gates=gates, on_progress=on_progress)
    verdict = evaluate(gates, result) if gates else None

    if args.json:
        out = result.model_dump(mode="json")
        if verdict is not None:
            out["verdict"] = verdict.model_dump(mode="json")
        print(json.dumps(out, indent=2))
    else:
        _print_table(result, verdict)

    if all(lv.completed == 0 for lv in result.levels):
        example = next((e for lv in result.levels for e in lv.error_examples), "no response")
        print(f"lmiflow: error: no request succeeded ({example})", file=sys.stderr)
        return 1
    return 0 if verdict is None or verdict.passed else 1


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


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _print_table(result: Any, verdict: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a pipe or file: do not squeeze the table into 80 columns
        console = Console(width=160)
    open_loop = result.settings.mode == "open"
    t = Table(title=f"lmiflow bench: {result.settings.source}", title_justify="left")
    cols = ["rate/s" if open_loop else "conc", "reqs", "err %", "TTFT\np50", "TTFT\np95",
            "TTFT\np99", "TPOT\np50", "TPOT\np95", "ITL\np50", "ITL\np99", "E2E\np50",
            "E2E\np95", "tok/s", "req/min", "$/1M\ntok"]
    for c in cols:
        t.add_column(c, justify="right")
    notes = []
    for lv in result.levels:
        err = None if lv.error_rate is None else lv.error_rate * 100
        t.add_row(
            _fmt(lv.rate_rps, 2) if open_loop else str(lv.concurrency), str(lv.requests),
            _fmt(err), _fmt(lv.ttft_ms.p50), _fmt(lv.ttft_ms.p95), _fmt(lv.ttft_ms.p99),
            _fmt(lv.tpot_ms.p50, 2), _fmt(lv.tpot_ms.p95, 2), _fmt(lv.itl_ms.p50, 2),
            _fmt(lv.itl_ms.p99, 2), _fmt(lv.e2e_ms.p50), _fmt(lv.e2e_ms.p95),
            _fmt(lv.output_tokens_per_s), _fmt(lv.requests_per_min),
            _fmt(lv.usd_per_1m_output_tokens, 2),
        )
        name = f"level {lv.concurrency if not open_loop else lv.rate_rps}"
        if lv.ttft_ms.few_samples:
            notes.append(f"{name}: {', '.join(lv.ttft_ms.few_samples)} from {lv.ttft_ms.n} "
                         "samples: too few to mean much")
        if lv.generator_saturated:
            notes.append(f"{name}: GENERATOR SATURATED ({lv.generator_saturated_reason}): "
                         "latencies may be the generator's, not the endpoint's")
        if lv.errors:
            notes.append(f"{name}: {lv.errors} failed, e.g. {lv.error_examples[0]}")
        if lv.token_count_mismatches:
            notes.append(f"{name}: {lv.token_count_mismatches}/{lv.token_count_checked} "
                         "streamed token counts differ from details.generated_tokens")
        if lv.goodput is not None:
            notes.append(f"{name}: goodput {lv.goodput:.3f} req/s "
                         f"({lv.goodput_per_min:.1f}/min)")
    console.print(t)
    console.print("latencies in ms. " + FORMULAS["ttft_ms"] + ". " + FORMULAS["tpot_ms"] + ".")
    for n in notes:
        console.print(f"- {n}")
    if verdict is not None:
        console.print(f"verdict: {'PASS' if verdict.passed else 'FAIL'}")
        for c in verdict.checks:
            mark = "ok  " if c.passed else "FAIL"
            console.print(f"  {mark} {c.metric} {c.stat} {c.op} {c.threshold:g} @ "
                          f"{c.concurrency}: observed {_fmt(c.observed, 3)}"
                          + (f" ({c.note})" if c.note else ""))
