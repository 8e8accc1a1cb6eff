"""`lmiflow` command line. Each subcommand lives in lmiflow/commands/<name>.py with
`add_parser(subparsers)` and `run(args) -> int`; heavy imports stay inside `run` so that
`lmiflow plan` starts fast (no Prefect, boto3 or torch unless a command needs them)."""

from __future__ import annotations

import argparse
import importlib
import sys

from lmiflow.errors import UserInputError

COMMANDS = ("plan", "deploy", "iam", "bench", "endpoints", "demo_model", "calibrate",
            "report_schema")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep it to one line
        self.exit(2, f"lmiflow: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmiflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"lmiflow.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lmiflow.commands.{name}":
                continue  # command not built yet
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserInputError as exc:
        print(f"lmiflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmiflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
