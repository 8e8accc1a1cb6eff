"""Cross-field limits of a config: which gate sets can never pass, which benchmarks cannot fit."""

from __future__ import annotations

import pytest

from lmiflow.bench.gate_spec import GateSpec
from lmiflow.errors import UserInputError
from lmiflow.limits import check_benchmark_fits, check_gate_levels, check_gates_agree


def g(op, threshold, concurrency=None, metric="ttft_ms", stat="p95"):
    return GateSpec(metric=metric, stat=stat, op=op, threshold=threshold,
                    concurrency=concurrency)


@pytest.mark.parametrize(("gates", "field"), [
    ([g("<=", 100), g(">=", 200)], "gates.1"),
    ([g("<", 100), g(">=", 100)], "gates.1"),  # strict bound at the same value: empty
    ([g(">", 5), g("<=", 5, concurrency=4)], "gates.1"),  # an every-level gate meets c=4
])
def test_contradicting_gates(gates, field):
    with pytest.raises(UserInputError) as exc:
        check_gates_agree(gates, [1, 4])
    assert exc.value.field == field


@pytest.mark.parametrize("gates", [
    [g("<=", 100), g(">=", 100)],  # exactly 100 passes
    [g("<=", 100, concurrency=1), g(">=", 200, concurrency=4)],  # different levels
    [g("<=", 100), g(">=", 200, stat="p50")],  # different statistics
    [g("<=", 100), g(">=", 200, metric="e2e_ms")],
])
def test_gates_that_leave_room(gates):
    check_gates_agree(gates, [1, 4])


def test_gate_on_a_level_not_benchmarked():
    check_gate_levels([g("<=", 1, concurrency=4)], [1, 4])
    with pytest.raises(UserInputError) as exc:
        check_gate_levels([g("<=", 1), g("<=", 1, concurrency=8)], [1, 4])
    assert exc.value.field == "gates.1.concurrency" and "[1, 4]" in exc.value.reason


def test_benchmark_must_fit_the_workload():
    check_benchmark_fits(1024, 128, 1024, 128)
    check_benchmark_fits(None, None, 8, 8)
    with pytest.raises(UserInputError, match="input_tokens"):
        check_benchmark_fits(1025, 1, 1024, 128)
    with pytest.raises(UserInputError, match="max_new_tokens"):
        check_benchmark_fits(1, 129, 1024, 128)


def test_each_limit_names_the_field_and_says_why_in_one_line():
    with pytest.raises(UserInputError) as exc:
        check_gate_levels([g("<=", 1, concurrency=8)], [4, 1])
    assert exc.value.reason == ("8 is not benchmarked (benchmark.concurrency is [1, 4]): the "
                                "gate could never pass")
    with pytest.raises(UserInputError) as exc:
        check_gates_agree([g(">=", 200), g("<=", 100)], [1])
    assert (exc.value.field, exc.value.reason) == (
        "gates.1", "contradicts gates.0: ttft_ms p95 >= 200 and <= 100 at concurrency 1 leave "
                   "no value that passes")
    with pytest.raises(UserInputError) as exc:
        check_benchmark_fits(1025, 1, 1024, 128)
    assert (exc.value.field, exc.value.reason) == (
        "benchmark.input_tokens", "1025 is longer than workload.max_input_tokens 1024 (every "
                                  "request would be refused)")
    with pytest.raises(UserInputError) as exc:
        check_benchmark_fits(1, 129, 1024, 128)
    assert (exc.value.field, exc.value.reason) == (
        "benchmark.max_new_tokens", "129 is more than workload.max_output_tokens 128 (every "
                                    "request would be refused)")


def test_a_gate_pinned_to_another_level_does_not_hide_the_gates_after_it():
    with pytest.raises(UserInputError) as exc:
        check_gates_agree([g("<=", 1, concurrency=4), g("<=", 100), g(">=", 200)], [1])
    assert exc.value.field == "gates.2"
