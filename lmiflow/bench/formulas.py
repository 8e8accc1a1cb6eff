"""Metric definitions as text, for the report, `--json` and `--help`. No imports: the CLI reads
these while building its parser, which must stay fast."""

PERCENTILES = (50, 90, 95, 99)
# Fewest samples for a percentile to mean much: p99 needs ~100 samples for one to lie above it.
MIN_SAMPLES = {"p50": 2, "p90": 10, "p95": 20, "p99": 100}

FORMULAS: dict[str, str] = {
    "ttft_ms": "TTFT = time of the first non-empty token chunk − request start",
    "tpot_ms": "TPOT = (E2E − TTFT) / (output tokens − 1): first token excluded; undefined for "
    "one-token outputs, which are left out of the TPOT sample",
    "itl_ms": "ITL = gap between successive output tokens (a chunk of k tokens arriving g after "
    "the previous chunk gives k gaps of g/k; tokens sharing the first chunk give gaps of 0), so "
    "the mean ITL of a request equals its TPOT",
    "chunk_gap_ms": "chunk gap = gap between successive streamed chunks (lines), unspread",
    "e2e_ms": "E2E = time of the last chunk − request start",
    "output_tokens_per_s": "output tokens/s = output tokens of the successful measured "
    "requests / window; window = first measured start → last measured end (warm-up excluded)",
    "requests_per_min": "requests/min = successful measured requests / window × 60",
    "error_rate": "error rate = failed (error or timeout) / attempted measured requests",
    "goodput": "goodput = requests meeting every latency gate by their own TTFT, TPOT, E2E, "
    "ITL / window, per second (goodput) and per minute (goodput_per_min)",
    "usd_per_1m_output_tokens": "$ per 1M output tokens = usd_per_hour × instances / "
    "(output tokens/s × 3600) × 1e6",
    "percentiles": "percentiles: numpy linear-interpolated, with their sample count n; one "
    "from fewer than p50:2, p90:10, p95:20, p99:100 samples is listed in few_samples",
    "token_count_mismatches": "token count mismatches = successful requests whose streamed "
    "token count differs from the server's details.generated_tokens",
}
