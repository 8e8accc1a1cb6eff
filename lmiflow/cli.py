"""`lmiflow` command line. Each subcommand lives in lmiflow/commands/<name>.py with
`add_parser(subparsers)` and `run(args) -> int`; heavy imports stay inside `run` so that
`lmiflow plan` starts fast (no Prefect, boto3 or torch unless a command needs them)."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import textwrap

from lmiflow.errors import UserInputError
from lmiflow.redact import masked_output, register_environment

COMMANDS = ("plan", "deploy", "iam", "bench", "endpoints", "demo_model", "calibrate",
            "report_schema", "images")


DESCRIPTION = """\
Size, deploy, benchmark and promote an open LLM on a SageMaker LMI endpoint,
or on this machine (the local target: a real model served on 127.0.0.1)."""

EPILOG = """\
start here:
  lmiflow plan --model configs/models/llama-2-13b --max-input-tokens 3072 \\
      --max-output-tokens 1024 --concurrency 4   which instance, and why
  lmiflow deploy configs/local-demo.yaml --dry-run   the plan, nothing created
  lmiflow deploy configs/local-demo.yaml             the whole pipeline, locally

'lmiflow COMMAND --help' describes each command. Exit status: 0 done; 1 rejected
or failed (production unchanged); 2 bad input (nothing created)."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Paragraphs refilled to the terminal's width (docstrings are written at 100 columns);
    indented lines (examples, commands) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in textwrap.dedent(text).strip("\n").split("\n\n"):
            lines = para.splitlines()
            if any(line.startswith(" ") for line in lines[1:]) or para.startswith(" "):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(lines), width, initial_indent=indent,
                                         subsequent_indent=indent, break_on_hyphens=False))
        return "\n\n".join(out)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = _Formatter
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # argparse exits 2 already; keep it to one line
        self.exit(2, f"lmiflow: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmiflow", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"lmiflow.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lmiflow.commands.{name}":
                continue  # command not built yet
            raise
        mod.add_parser(sub)
    return parser


# A value quoted in an error (repr: '...' or "...") longer than a person reads at a glance;
# an apostrophe inside a word (production's, isn't) opens and closes nothing.
_LONG_QUOTE = re.compile(r"""(?<!\w)(['"])([^'"\n]{61,})\1(?!\w)""")


def short_quotes(line: str) -> str:
    """The line with each long quoted value cut to its first 57 characters: messages quote
    what the user wrote (`'x...' is not one of ...`), and a 10,000-character value must not
    bury the reason that follows it. One place, for every message of every command."""
    return _LONG_QUOTE.sub(lambda m: f"{m[1]}{m[2][:57]}...{m[1]}", line)


def as_input_error(exc: BaseException) -> UserInputError | None:
    """A pydantic ValidationError that reached the command line is bad input that a boundary
    did not turn into UserInputError itself (a model built from the config after it was read,
    e.g. a latency limit from a gate): it takes the same exit-2 path, named by the model and
    field, instead of a traceback. pydantic is only loaded when a command used it, so the
    check costs `lmiflow --help` nothing."""
    core = sys.modules.get("pydantic_core")
    if core is None or not isinstance(exc, core.ValidationError):
        return None
    from lmiflow.spec import format_validation_error

    return format_validation_error(exc, prefix=f"{exc.title}.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    register_environment()  # HF_TOKEN, AWS keys: masked in all a command prints
    with masked_output():
        return _run(args)


def _run(args) -> int:
    try:
        try:
            return int(args.run(args) or 0)
        except Exception as exc:
            error = as_input_error(exc)
            if error is None:
                raise
            raise error from None
    except UserInputError as exc:  # one line per problem
        for line in str(exc).splitlines():
            print(f"lmiflow: error: {short_quotes(line)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmiflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `lmiflow ... | head`: the reader has what it wanted. Point stdout at /dev/null so
        # the interpreter's last flush does not fail too, and exit as a shell would (SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
