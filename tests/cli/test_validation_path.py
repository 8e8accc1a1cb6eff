"""One exit-2 path: a pydantic ValidationError that reaches the command line, from whichever
model raised it, is bad input (one line naming the model and field, exit 2), not a traceback;
any other exception is still a bug and keeps its traceback."""

from __future__ import annotations

import pytest

from lmiflow import cli
from lmiflow.commands import plan as plan_command
from lmiflow.errors import UserInputError

PLAN = ["plan", "--model", "configs/models/llama-3.1-8b", "--max-input-tokens", "8",
        "--max-output-tokens", "8", "--concurrency", "1"]


def test_a_validation_error_from_any_model_exits_2_in_one_line(monkeypatch, capsys):
    from lmiflow.sizing.planner import LatencyLimit

    def bad_limit(args):  # what a gate at -1 ms made of `lmiflow deploy` (issue 24)
        return LatencyLimit(metric="ttft_ms", threshold=-1)

    monkeypatch.setattr(plan_command, "build_plan", bad_limit)
    assert cli.main(PLAN) == 2
    err = capsys.readouterr().err
    assert err == "lmiflow: error: LatencyLimit.threshold: Input should be greater than 0\n"


def test_other_exceptions_are_not_taken_for_bad_input(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(plan_command, "build_plan", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(PLAN)


def test_as_input_error_ignores_everything_but_validation_errors():
    assert cli.as_input_error(ValueError("x")) is None
    from pydantic import BaseModel, ValidationError

    class Limits(BaseModel):
        n: int

    with pytest.raises(ValidationError) as exc:
        Limits(n="many")
    error = cli.as_input_error(exc.value)
    assert isinstance(error, UserInputError)
    assert (error.field, error.reason) == ("Limits.n", "Input should be a valid integer, unable "
                                                       "to parse string as an integer")


@pytest.mark.parametrize(("line", "shown"), [
    ("f: '" + "x" * 100 + "' is not valid", "f: '" + "x" * 57 + "...' is not valid"),
    ('f: "' + "y" * 61 + '" is not valid', 'f: "' + "y" * 57 + '..." is not valid'),
    ("f: '" + "x" * 60 + "' is not valid", "f: '" + "x" * 60 + "' is not valid"),  # short enough
    # apostrophes inside words quote nothing, however far apart
    ("production's endpoint is Failed and " + "z" * 80 + " isn't replaced",
     "production's endpoint is Failed and " + "z" * 80 + " isn't replaced"),
])
def test_long_quoted_values_are_cut(line, shown):
    assert cli.short_quotes(line) == shown
