"""`lmiflow plan`: what a model needs per GPU and which instance holds it most cheaply."""

from __future__ import annotations

import argparse
import json
import sys

from lmiflow.errors import UserInputError
from lmiflow.limits import MAX_CONCURRENCY, MAX_INPUT_TOKENS, MAX_INSTANCES, MAX_OUTPUT_TOKENS

EPILOG = """\
KV cache per token = 2 (K,V) x layers x kv_heads x head_dim x kv-dtype bytes (GQA-aware;
MLA: (kv_lora_rank + rope_dim) x layers x bytes). Per GPU at tensor-parallel degree tp:
weights / tp + KV (kv_heads / tp, at least 1) + overhead (CUDA context, CUDA graphs, NCCL at
tp >= 2, prefill activations, sampler logits) must fit in gpu_memory_utilization x memory.

Latency (per option, for --concurrency requests spread over its copies): a decode step
reads the weights and the KV cache at the average context over the memory bandwidth (or is
bound by FLOPs over the tensor peak), plus all-reduces and a step overhead; TTFT is the
prefill (FLOPs over the peak) plus the wait behind other requests' prefills. A --max-*-ms
limit must be met with a 10 % margin; options that miss say by how much. Factors come from
`lmiflow calibrate` where benchmarks recorded them, else from the engine's defaults.
"""


def _shown(text: str, quoted: bool = False) -> str:
    """What the user typed, as short as an error line can quote it (cut after repr, which
    spells an unprintable character in up to ten)."""
    text = repr(text) if quoted else text
    return text if len(text) <= 40 else text[:37] + "..."


def positive_float(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive number, got {_shown(text, True)}"
                                             ) from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {_shown(text)}")
        return value

    parse.__name__ = flag
    return parse


def positive_int(flag: str, most: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # also a number of more than 4300 digits
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {_shown(text, True)}"
                                             ) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {_shown(text)}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:,}, got {_shown(text)}")
        return value

    parse.__name__ = flag
    return parse


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="Size a model and choose the cheapest instance and shards.",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="Directory or config.json, Hub id (org/name), or snapshot name.")
    p.add_argument("--revision", default=None, help="Hub revision.")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16, fp8, int8, int4.")
    p.add_argument("--kv-cache-dtype", default="auto", help="auto, fp32, fp16, bf16, fp8.")
    p.add_argument("--max-input-tokens", type=positive_int("max-input-tokens", MAX_INPUT_TOKENS),
                   required=True,
                   help="Longest prompt a request sends, in tokens.")
    p.add_argument("--max-output-tokens", required=True,
                   type=positive_int("max-output-tokens", MAX_OUTPUT_TOKENS),
                   help="Most tokens a request generates.")
    p.add_argument("--concurrency", type=positive_int("concurrency", MAX_CONCURRENCY),
                   required=True,
                   help="Requests in flight at once; each holds KV cache for input + output.")
    p.add_argument("--instance-count", type=positive_int("instance-count", MAX_INSTANCES),
                   default=1,
                   help="Instances behind the endpoint (default 1).")
    p.add_argument("--max-instance-count",
                   type=positive_int("max-instance-count", MAX_INSTANCES),
                   default=None, help="Scale out up to this many instances.")
    p.add_argument("--instance-types", default="",
                   help="Comma-separated globs to consider, e.g. 'ml.g5.*,ml.g6e.*'.")
    p.add_argument("--instance-type", default=None, help="Force one instance type.")
    p.add_argument("--tensor-parallel-degree", type=int, choices=(1, 2, 4, 8), default=None,
                   help="Force the GPUs one model copy spans (default: every degree).")
    p.add_argument("--max-usd-per-hour", type=positive_float("max-usd-per-hour"), default=None,
                   help="Price ceiling.")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="Share of each GPU's memory the engine may use (default 0.9).")
    p.add_argument("--max-ttft-ms", type=positive_float("max-ttft-ms"), default=None,
                   help="TTFT p50 limit the chosen option's prediction must meet.")
    p.add_argument("--max-tpot-ms", type=positive_float("max-tpot-ms"), default=None,
                   help="TPOT p50 limit the chosen option's prediction must meet.")
    p.add_argument("--engine", choices=("vllm", "trtllm"), default="vllm",
                   help="LMI backend the latency prediction assumes.")
    p.add_argument("--calibration", default=None,
                   help="Calibration store (default: calibration.json in the state dir).")
    p.add_argument("--uncalibrated", action="store_true",
                   help="Ignore the calibration store: the engine's default factors.")
    p.add_argument("--catalog", default=None, help="Instance catalog CSV (default: bundled).")
    p.add_argument("--all", action="store_true",
                   help="Every option (not the top 15), with layout, $/1M tokens and reason.")
    p.add_argument("--json", action="store_true", help="Print one JSON object.")
    p.set_defaults(run=run)


def build_plan(args):
    from lmiflow.calibration_store import default_store_path, fitted, load_store
    from lmiflow.model_source import resolve_model
    from lmiflow.sizing.catalog import CatalogError, load_catalog
    from lmiflow.sizing.memory import KV_DTYPES, WEIGHT_DTYPES
    from lmiflow.sizing.planner import LatencyLimit, PlanRequest, plan

    if args.dtype not in ("auto", *WEIGHT_DTYPES):
        raise UserInputError("--dtype", f"{args.dtype!r} is not one of auto, "
                                        f"{', '.join(WEIGHT_DTYPES)}")
    if args.kv_cache_dtype not in ("auto", *KV_DTYPES):
        raise UserInputError("--kv-cache-dtype", f"{args.kv_cache_dtype!r} is not one of auto, "
                                                 f"{', '.join(KV_DTYPES)}")
    if not 0.1 < args.gpu_memory_utilization <= 1:
        raise UserInputError("--gpu-memory-utilization", "must be in (0.1, 1]")
    if args.max_usd_per_hour is not None and args.max_usd_per_hour <= 0:
        raise UserInputError("--max-usd-per-hour", "must be positive")
    if args.max_instance_count is not None and args.max_instance_count < args.instance_count:
        raise UserInputError("--max-instance-count", f"{args.max_instance_count} is below "
                                                     f"--instance-count {args.instance_count}")
    calibration = {}
    if not args.uncalibrated:
        from lmiflow.calibration_store import CalibrationStoreError

        try:
            calibration = fitted(load_store(args.calibration or default_store_path()))
        except CalibrationStoreError as exc:
            raise UserInputError("--calibration", str(exc)) from None
    resolved = resolve_model(args.model, args.revision)
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as exc:
        raise UserInputError("--catalog", str(exc)) from None
    req = PlanRequest(
        dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
        max_input_tokens=args.max_input_tokens, max_output_tokens=args.max_output_tokens,
        concurrency=args.concurrency, instance_count=args.instance_count,
        gpu_memory_utilization=args.gpu_memory_utilization,
        allow=[g.strip() for g in args.instance_types.split(",") if g.strip()],
        instance_type=args.instance_type, tensor_parallel_degree=args.tensor_parallel_degree,
        max_usd_per_hour=args.max_usd_per_hour, max_instance_count=args.max_instance_count,
        engine=args.engine,
        latency_limits=[LatencyLimit(metric=m, threshold=v, source=f"--max-{m[:4]}-ms")
                        for m, v in (("ttft_ms", args.max_ttft_ms),
                                     ("tpot_ms", args.max_tpot_ms)) if v is not None],
    )
    return resolved, plan(resolved.spec, req, catalog, calibration=calibration)


def run(args) -> int:
    resolved, p = build_plan(args)
    if args.json:
        out = p.model_dump(mode="json")
        out["model"]["source"] = resolved.source
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from lmiflow.plan_table import print_plan

        print_plan(p, resolved.source, show_all=args.all)
    if p.chosen is None:
        # An impossible plan is bad input (exit 2), after showing every option and why.
        print(f"lmiflow: error: plan: {p.chosen_reason}", file=sys.stderr)
        return 2
    return 0
