"""The report's benchmark section shows request lengths and where token counts came from."""

from __future__ import annotations

from lmiflow.bench.metrics import BenchResult, RequestRecord, compute_level
from lmiflow.report.writer import render_markdown
from tests.report.sample import full_report


def test_lengths_table_shows_fixed_lengths_and_short_outputs():
    def rec(n_out, n_in, source="stream"):
        times = [0.1 + 0.01 * i for i in range(n_out)]
        return RequestRecord(start=0.0, first_token=times[0], token_times=times, end=times[-1],
                             output_tokens=n_out, input_tokens=n_in, token_source=source,
                             generated_tokens_reported=n_out)

    exact = compute_level([rec(8, 16), rec(8, 16)], 1, expected_output_tokens=8)
    short = compute_level([rec(8, 16), rec(5, 20, "tokenizer")], 4, expected_output_tokens=8)
    bench = BenchResult(levels=[exact, short], notes=["fixed length through min_length"])
    bench.settings.fixed_length = "min_length"
    report = full_report()
    report.benchmark = bench
    md = render_markdown(report)
    assert "outputs fixed through min_length" in md
    assert "| 1 | 16 | 8 | all 8 | stream 2 | none |" in md
    assert "| 4 | 18.00 (16–20) | 6.50 (5–8) | 1 not 8 | stream 1, tokenizer 1 | none |" in md
    assert "- fixed length through min_length" in md
