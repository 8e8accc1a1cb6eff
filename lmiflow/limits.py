"""Limits that span several fields of a config, checked when it is read (exit 2, nothing
created), because each one otherwise fails a minute later, after a candidate exists: a gate on
a level the benchmark never runs can only fail; two gates that no value satisfies reject every
candidate; a benchmark prompt longer than the context the server is told to accept makes
every request an error (and a 10^9-token prompt exhausts memory while it is built).

Pure functions of plain values (no import of the config model), so the config's validators
call them and tests need nothing else. Each raises UserInputError naming the field.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Protocol

from lmiflow.errors import UserInputError

# The largest workload a config or `lmiflow plan` accepts (one place for both): beyond any
# model's context and any endpoint's concurrency, and small enough that the planner's
# arithmetic stays in floats.
MAX_INPUT_TOKENS = 2_000_000
MAX_OUTPUT_TOKENS = 1_000_000
MAX_CONCURRENCY = 100_000
MAX_INSTANCES = 100

_LOWER = {">": operator.gt, ">=": operator.ge}
_UPPER = {"<": operator.lt, "<=": operator.le}


class GateLike(Protocol):
    metric: str
    stat: str
    op: str
    threshold: float
    concurrency: int | None


def check_gate_levels(gates: Sequence[GateLike], levels: Iterable[int]) -> None:
    """A gate pinned to a concurrency must name a level the benchmark runs."""
    levels = sorted(set(levels))
    for i, g in enumerate(gates):
        if g.concurrency is not None and g.concurrency not in levels:
            raise UserInputError(
                f"gates.{i}.concurrency",
                f"{g.concurrency} is not benchmarked (benchmark.concurrency is {levels}): "
                "the gate could never pass",
            )


def check_gates_agree(gates: Sequence[GateLike], levels: Iterable[int]) -> None:
    """No two gates on the same metric, statistic and level may exclude every value: with
    `ttft_ms p95 <= 100` and `ttft_ms p95 >= 200` no candidate can ever be promoted."""
    for level in sorted(set(levels)):
        bounds: dict[tuple[str, str], tuple[list, list]] = {}
        for i, g in enumerate(gates):
            if g.concurrency not in (None, level):
                continue
            lower, upper = bounds.setdefault((g.metric, g.stat), ([], []))
            (lower if g.op in _LOWER else upper).append((i, g))
        for (metric, stat), (lower, upper) in bounds.items():
            for i, lo in lower:
                for j, hi in upper:
                    strict = lo.op == ">" or hi.op == "<"
                    empty = lo.threshold > hi.threshold or (
                        strict and lo.threshold == hi.threshold)
                    if empty:
                        first, second = sorted((i, j))
                        raise UserInputError(
                            f"gates.{second}",
                            f"contradicts gates.{first}: {metric} {stat} {lo.op} "
                            f"{lo.threshold:g} and {hi.op} {hi.threshold:g} at concurrency "
                            f"{level} leave no value that passes",
                        )


def check_benchmark_fits(input_tokens: int | None, max_new_tokens: int | None,
                         max_input_tokens: int, max_output_tokens: int) -> None:
    """The benchmark's requests must fit the context the server is configured for."""
    if input_tokens is not None and input_tokens > max_input_tokens:
        raise UserInputError(
            "benchmark.input_tokens",
            f"{input_tokens} is longer than workload.max_input_tokens {max_input_tokens} "
            "(every request would be refused)",
        )
    if max_new_tokens is not None and max_new_tokens > max_output_tokens:
        raise UserInputError(
            "benchmark.max_new_tokens",
            f"{max_new_tokens} is more than workload.max_output_tokens {max_output_tokens} "
            "(every request would be refused)",
        )

