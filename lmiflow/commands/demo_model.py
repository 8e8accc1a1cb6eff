"""`lmiflow demo-model [DIR]`: build the tiny random-weight Llama the local target can serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(".lmiflow/demo-model")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo-model",
        help="Build a tiny random-weight Llama (HF format) for offline local deploys.",
        description="Writes config.json, model.safetensors, tokenizer files (byte-level BPE "
        "with a chat template) to DIR in a few seconds, without network. The text it writes "
        "is gibberish; everything else is a real model.",
    )
    p.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR,
                   help=f"Output directory (default: {DEFAULT_DIR}).")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: Any) -> int:
    from lmiflow.serving.demo_model import build_demo_model

    out = build_demo_model(args.dir, seed=args.seed)
    print(out)
    return 0
