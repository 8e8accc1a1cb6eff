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
    "chunk_itl_ms": "chunk ITL = gap between successive streamed chunks (lines) as they "
    "arrived, unspread: equal to ITL only when every chunk holds one token",
    "output_tokens": "output tokens of a request: the server's running count per chunk when it "
    "gives one; one per chunk when the server's final count equals the chunks; else the model's "
    "tokenizer on the streamed text (each token in the chunk its last character arrived in, at "
    "least one per chunk); token_sources counts requests per source, token_count_differences "
    "the server's final count minus this one",
    "input_length": "input length = prompt tokens as the server counts them (its own report, "
    "else the model's tokenizer on what was sent)",
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
    "token_count_mismatches": "token count mismatches = successful requests whose output "
    "token count differs from the server's own (details.generated_tokens, usage."
    "completion_tokens; LMI's vLLM service reports one more than it streams)",
    "output_length_mismatches": "output length mismatches = successful requests of a "
    "fixed-length run whose output is not the configured length",
    "saturated": "saturated (open loop) = TTFT p50 of the later half of the arrivals over 1.5× "
    "the earlier half's, or arrivals held by the in-flight cap: requests queue faster than "
    "they are served",
}
