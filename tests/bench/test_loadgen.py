"""The load generator against a synthetic streaming endpoint with known latencies.

Bounds here are loose (shared 2-core CI machines); the tight figures are perf/bench_fidelity.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmiflow.bench.gate_spec import GateSpec
from lmiflow.bench.http import RawResponse
from lmiflow.bench.loadgen import (
    EndpointRejected,
    LoadConfig,
    arrivals,
    bench_endpoint,
    bench_url,
    redact_url,
)
from lmiflow.bench.runner import LevelPlan, run_plan, split
from lmiflow.bench.synthetic import serve_in_subprocess
from lmiflow.bench.transports import Req
from lmiflow.cli import main
from lmiflow.errors import NotAnswering

ROOT = Path(__file__).resolve().parents[2]
TTFT_MS, TPOT_MS = 60.0, 10.0


@pytest.fixture(scope="module")
def url():
    with serve_in_subprocess(ttft_ms=TTFT_MS, tpot_ms=TPOT_MS) as u:
        yield u


def cfg(**kw) -> LoadConfig:
    base = dict(concurrency=[1, 4], requests=8, warmup=2, max_new_tokens=8, input_tokens=16,
                timeout_s=10)
    return LoadConfig(**{**base, **kw})


def test_redact_url_drops_credentials_and_query():
    assert redact_url("https://u:pw@h.example:8443/invocations?token=s#x") == (
        "https://h.example:8443/invocations")


def test_poisson_arrivals_are_seeded_and_bounded():
    a = arrivals(2000, 50.0, seed=1)
    assert a == arrivals(2000, 50.0, seed=1) and a == sorted(a)
    assert 2000 / a[-1] == pytest.approx(50.0, rel=0.1)  # the offered rate
    assert max(arrivals(2000, 50.0, seed=1, duration_s=2.0)) <= 2.0


# --- scheduling, with an in-process transport -------------------------------------------------


class CountingTransport:
    """One token after `delay_s`; tracks requests in flight."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.in_flight = self.peak = 0
        self.starts: list[float] = []

    async def open(self, n):
        pass

    async def send(self, req, raw, timeout_s):
        raw.start = time.perf_counter()
        self.starts.append(raw.start)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            raw.status, raw.end = 200, time.perf_counter()
            raw.chunks.append((raw.end, b'{"token": {"id": 1, "text": "x"}}\n'))
        finally:
            self.in_flight -= 1

    async def aclose(self):
        pass


def plan(n, conc, **kw) -> LevelPlan:
    return LevelPlan(reqs=[Req({}, b"{}", warmup=i < 2) for i in range(n)], concurrency=conc,
                     timeout_s=5, **kw)


def test_closed_loop_keeps_concurrency():
    t = CountingTransport(0.01)
    raws, stats, waits = asyncio.run(run_plan(t, plan(20, 4)))
    assert len(raws) == 20 and t.peak == 4 and waits == 0
    assert all(r.status == 200 for r in raws) and stats.cpu_pct is not None


def test_ramp_up_spreads_worker_starts():
    t = CountingTransport(0.5)
    asyncio.run(run_plan(t, plan(4, 4, ramp_up_s=0.2)))
    gaps = [b - a for a, b in zip(t.starts, t.starts[1:], strict=False)]
    assert all(0.04 < g < 0.1 for g in gaps), gaps  # 0.2 s / 4 workers apart


def test_open_loop_follows_the_schedule_and_counts_arrivals_held_by_the_cap():
    t = CountingTransport(0.2)
    times = [0.0, 0.01, 0.02, 0.03, 0.3]
    raws, _, waits = asyncio.run(run_plan(t, plan(5, 2, arrivals=times)))
    # 1, 2 start at once; 3, 4 wait for them (0.2 s); 5 arrives at 0.3 and waits for 3, 4.
    assert len(raws) == 5 and t.peak == 2 and waits == 3
    offsets = [s - t.starts[0] for s in t.starts]
    assert offsets == pytest.approx([0.0, 0.01, 0.2, 0.21, 0.4], abs=0.05)


def test_split_deals_requests_and_workers_round_robin():
    parts = split(plan(10, 5, arrivals=[float(i) for i in range(10)]), 2)
    assert [idx for idx, _ in parts] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert [p.concurrency for _, p in parts] == [3, 2]
    assert parts[1][1].arrivals == [1.0, 3.0, 5.0, 7.0, 9.0]


# --- against the synthetic endpoint -----------------------------------------------------------


@pytest.mark.slow
def test_closed_loop_measures_known_latencies(url):
    seen = []
    gates = [GateSpec(metric="ttft_ms", stat="p95", threshold=10_000)]
    res = bench_url(url, cfg(usd_per_hour=1.0), gates=gates,
                    on_progress=lambda *a: seen.append(a))
    assert res.settings.client == "socket" and res.settings.fixed_length == "ignore_eos_token"
    assert [lv.concurrency for lv in res.levels] == [1, 4]
    for lv in res.levels:
        assert (lv.requests, lv.warmup_requests, lv.errors, lv.error_rate) == (8, 2, 0, 0.0)
        assert lv.output_tokens == 8 * 8 and lv.token_count_mismatches == 0
        assert lv.token_count_checked == 8 and lv.token_sources == {"stream": 8}
        assert lv.output_length_mismatches == 0 and lv.expected_output_tokens == 8
        # Loose: this machine is shared. The server keeps absolute deadlines, so a late first
        # token shortens the later gaps; E2E is the steadiest figure. A generator that counted
        # the first token in TPOT would see (60 + 70) / 7 = 18.6 ms and fail.
        assert TTFT_MS * 0.97 < lv.ttft_ms.p50 < TTFT_MS * 1.5
        assert TPOT_MS * 0.75 < lv.tpot_ms.p50 < TPOT_MS * 1.4
        assert lv.itl_ms.n == 8 * 7
        e2e = TTFT_MS + 7 * TPOT_MS
        assert e2e * 0.97 < lv.e2e_ms.p50 < e2e * 1.3
        assert lv.usd_per_1m_output_tokens is not None and lv.goodput > 0
        assert lv.generator is not None and lv.generator.cpu_pct is not None
    # closed loop at 4 gives ~4x the tokens/s of 1
    assert res.levels[1].output_tokens_per_s > 2.5 * res.levels[0].output_tokens_per_s
    assert (1, 10, 10) in seen and (4, 10, 10) in seen
    assert res.settings.source == url and res.settings.warmup == 2


@pytest.mark.slow
def test_merged_lines_are_counted_in_tokens_with_the_tokenizer(word_tokenizer):
    # 12 tokens, 4 per line; the server reports one more than it streams (LMI's vLLM).
    with serve_in_subprocess(ttft_ms=20, tpot_ms=5, tokens_per_line=4,
                             details_token_offset=1) as u:
        res = bench_url(u, cfg(concurrency=[2], requests=4, warmup=0, max_new_tokens=12),
                        tokenizer=word_tokenizer, tokenizer_source="words")
    lv = res.levels[0]
    assert lv.output_tokens == 4 * 12 and lv.token_sources == {"tokenizer": 4}
    assert lv.token_count_differences == {"+1": 4} and lv.output_length_mismatches == 0
    # the last line leaves when token 12 is ready: E2E - TTFT spans 8 token times, 11 gaps
    assert lv.tpot_ms.p50 == pytest.approx(8 * 5 / 11, rel=0.35)
    assert lv.input_length.min == lv.input_length.max  # the server's count of an exact prompt
    assert res.settings.tokenizer == "words" and res.settings.prompt_tokens_exact


@pytest.mark.slow
def test_an_unknown_fixed_length_parameter_falls_back_to_the_next():
    with serve_in_subprocess(ttft_ms=5, tpot_ms=1, reject_params=("ignore_eos_token",)) as u:
        res = bench_url(u, cfg(concurrency=[1], requests=2, warmup=0))
    assert res.settings.fixed_length == "min_length" and res.levels[0].errors == 0
    assert any("refused ignore_eos_token" in n for n in res.notes)
    with serve_in_subprocess(ttft_ms=5, tpot_ms=1,
                             reject_params=("ignore_eos_token", "min_length")) as u:
        res = bench_url(u, cfg(concurrency=[1], requests=2, warmup=0))
    assert res.settings.fixed_length is None and res.levels[0].errors == 0
    assert any("accepts no fixed-length parameter" in n for n in res.notes)


@pytest.mark.slow
def test_a_request_the_endpoint_cannot_take_is_refused_up_front():
    with serve_in_subprocess(ttft_ms=5, tpot_ms=1, max_model_len=20) as u, \
            pytest.raises(EndpointRejected, match="exceeds max_model_len 20"):
        bench_url(u, cfg(concurrency=[1], requests=2, input_tokens=16, max_new_tokens=8))


@pytest.mark.slow
def test_failures_are_counted_and_the_run_continues():
    with serve_in_subprocess(ttft_ms=5, tpot_ms=1, fail_rate=0.4, seed=3) as u:
        res = bench_url(u, cfg(requests=20, warmup=0, fixed_length=False))
    for lv in res.levels:
        assert lv.requests == 20 and 0 < lv.errors < 20
        assert lv.completed + lv.errors == 20
        assert lv.error_rate == pytest.approx(lv.errors / 20)
        assert lv.ttft_ms.n == lv.completed
    examples = " ".join(e for lv in res.levels for e in lv.error_examples)
    assert "HTTP 424" in examples or "finish_reason=error" in examples


@pytest.mark.slow
def test_an_endpoint_that_sends_nothing_within_the_timeout_ends_the_benchmark():
    """No byte within the per-request timeout: every level would wait it out request after
    request, so the benchmark ends at once, naming the endpoint and the deadline."""
    with serve_in_subprocess(ttft_ms=3000, tpot_ms=1) as u:
        t0 = time.perf_counter()
        with pytest.raises(NotAnswering) as exc:
            bench_url(u, cfg(concurrency=[2], requests=2, warmup=0, timeout_s=0.3))
        assert time.perf_counter() - t0 < 4
    assert "benchmark's first request" in str(exc.value)
    assert "0.3 s (benchmark.timeout_s)" in exc.value.deadline


def test_a_level_stops_once_every_worker_timed_out_with_nothing():
    """A level whose `concurrency` requests in a row time out without a byte sends no more
    (each would wait out its timeout); the rest are marked, not sent."""
    from lmiflow.bench.runner import NOT_SENT, stopped_answering

    class Silent:
        sent = 0

        async def open(self, n):
            pass

        async def send(self, req, raw, timeout_s):
            Silent.sent += 1
            await asyncio.sleep(timeout_s)
            raw.timed_out, raw.error = True, "timeout"

        async def aclose(self):
            pass

    reqs = [Req({}, b"{}") for _ in range(12)]
    plan = LevelPlan(reqs=reqs, concurrency=2, timeout_s=0.1, silent_limit=2)
    t0 = time.perf_counter()
    raws, _, _ = asyncio.run(run_plan(Silent(), plan))
    assert time.perf_counter() - t0 < 0.5  # 12 requests would take 0.6 s
    assert Silent.sent <= 3 and stopped_answering(raws)
    assert sum(r.error == NOT_SENT for r in raws) == 12 - Silent.sent
    assert not stopped_answering([RawResponse(timed_out=True)])


@pytest.mark.slow
def test_open_loop_beside_closed_loop_with_repeats(url):
    res = bench_url(url, cfg(concurrency=[2], rates=[40.0], requests=12, warmup=0, repeats=2,
                             max_concurrency=32))
    closed, open_ = res.levels
    assert res.settings.mode == "mixed" and res.settings.repeats == 2
    assert closed.rate_rps is None and open_.rate_rps == 40.0 and open_.concurrency == 32
    assert closed.requests == open_.requests == 24 and open_.errors == 0
    assert len(closed.repeats) == len(open_.repeats) == 2
    assert TTFT_MS * 0.97 < open_.ttft_ms.p50 < TTFT_MS * 1.5
    assert res.level(2) is closed and res.rate_level(40.0) is open_
    assert res.level(32) is None  # an open-loop cap is not a closed-loop level


@pytest.mark.slow
def test_a_level_spread_over_processes_measures_the_same(url):
    res = bench_url(url, cfg(concurrency=[6], requests=12, warmup=0, processes=2))
    lv = res.levels[0]
    assert lv.errors == 0 and lv.generator.processes == 2
    assert TTFT_MS * 0.97 < lv.ttft_ms.p50 < TTFT_MS * 1.5
    assert TPOT_MS * 0.75 < lv.tpot_ms.p50 < TPOT_MS * 1.4


def test_unreachable_url_is_errors():
    res = bench_url("http://127.0.0.1:9/invocations", cfg(concurrency=[1], requests=2, warmup=0))
    assert res.levels[0].error_rate == 1.0 and res.levels[0].error_examples


class FakeTarget:
    """A Target whose invoke_stream blocks like boto3's: tokens 20 ms apart after 50 ms."""

    kind = "fake"

    def __init__(self):
        self.payloads = []
        self.reserved = []

    def describe(self, name):
        from lmiflow.targets.base import EndpointStatus

        return EndpointStatus(name=name, status="InService")  # no URL: invoke_stream

    def reserve_invocations(self, n):
        self.reserved.append(n)

    def invoke_stream(self, name, payload, timeout_s=None):
        self.payloads.append((name, payload))
        n = payload["parameters"]["max_new_tokens"]
        time.sleep(0.05)
        for i in range(n):
            if i:
                time.sleep(0.02)
            line = {"token": {"id": i, "text": "t"}}
            if i == n - 1:
                line["details"] = {"finish_reason": "length", "generated_tokens": n}
            yield json.dumps(line).encode()


@pytest.mark.slow
def test_named_endpoint_through_a_target():
    target = FakeTarget()
    res = bench_endpoint(target, "prod", cfg(concurrency=[1, 3], requests=3, warmup=1,
                                             max_new_tokens=4), find_tokenizer=False)
    # one probe request, then (1 + 3) per level
    assert all(name == "prod" for name, _ in target.payloads) and len(target.payloads) == 9
    assert target.reserved == [1, 1, 3]  # the pool is sized before each level
    for lv in res.levels:
        assert lv.errors == 0 and lv.output_tokens == 12
        assert 48 < lv.ttft_ms.p50 < 80 and 19 < lv.tpot_ms.p50 < 30
    assert res.settings.source == "fake:prod" and res.settings.client == "target.invoke_stream"


class Refusing(FakeTarget):
    """A target whose endpoint refuses ignore_eos_token with 400, as the local target raises
    it (InvocationError carries the status)."""

    def invoke_stream(self, name, payload, timeout_s=None):
        from lmiflow.targets.local import InvocationError

        if payload["parameters"].get("ignore_eos_token"):
            raise InvocationError(400, b'{"error": "ignore_eos_token: unknown field"}')
        return super().invoke_stream(name, payload)


@pytest.mark.slow
def test_a_target_that_refuses_a_parameter_gets_the_fallback():
    res = bench_endpoint(Refusing(), "prod", cfg(concurrency=[1], requests=1, warmup=0,
                                                 max_new_tokens=2), find_tokenizer=False)
    assert res.settings.fixed_length == "min_length" and res.levels[0].errors == 0


@pytest.mark.slow
def test_bench_runs_from_inside_an_event_loop(url):
    async def inside():  # e.g. an async Prefect flow calling the blocking API
        return bench_url(url, cfg(concurrency=[1], requests=2, warmup=0, max_new_tokens=2))

    res = asyncio.run(inside())
    assert res.levels[0].completed == 2


def test_raw_response_defaults_are_a_failed_request_until_filled():
    from lmiflow.bench.records import to_record

    rec = to_record(RawResponse(start=1.0, status=503, chunks=[(1.1, b"busy")], end=1.1),
                    "inputs")
    assert not rec.ok and rec.error == "HTTP 503: busy"


# --- the CLI --------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_json_shape(url):
    out = subprocess.run(
        [sys.executable, "-m", "lmiflow", "bench", "--url", url, "--concurrency", "1,2",
         "--requests", "3", "--warmup", "1", "--max-new-tokens", "4", "--input-tokens", "8",
         "--usd-per-hour", "2", "--instances", "2", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [lv["concurrency"] for lv in data["levels"]] == [1, 2]
    for lv in data["levels"]:
        for key in ("requests", "errors", "error_rate", "output_tokens_per_s",
                    "requests_per_min", "usd_per_1m_output_tokens"):
            assert isinstance(lv[key], int | float), key
        for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            assert set(lv[metric]) >= {"mean", "p50", "p90", "p95", "p99", "n"}
            assert lv[metric]["p50"] > 0
        assert lv["output_length"]["min"] == lv["output_length"]["max"] == 4
    assert data["settings"]["instances"] == 2


@pytest.mark.slow
def test_cli_speaks_openai_chat_to_a_stand_in(url, word_tokenizer_dir):
    chat = url.rsplit("/", 1)[0] + "/v1/chat/completions"
    out = subprocess.run(
        [sys.executable, "-m", "lmiflow", "bench", "--url", chat, "--concurrency", "2",
         "--requests", "4", "--warmup", "0", "--max-new-tokens", "6", "--input-tokens", "10",
         "--tokenizer", str(word_tokenizer_dir), "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    lv = data["levels"][0]
    assert data["settings"]["api"] == "openai-chat" and lv["errors"] == 0
    assert data["settings"]["fixed_length"] == "ignore_eos"
    assert lv["output_tokens"] == 4 * 6 and lv["token_count_mismatches"] == 0
    assert TTFT_MS * 0.97 < lv["ttft_ms"]["p50"] < TTFT_MS * 1.5


@pytest.mark.slow
def test_cli_fits_defaults_to_an_openai_servers_context_or_says_why_not():
    with serve_in_subprocess(ttft_ms=5, tpot_ms=1, max_model_len=100) as u:
        comp = u.rsplit("/", 1)[0] + "/v1/completions"
        out = subprocess.run(
            [sys.executable, "-m", "lmiflow", "bench", "--url", comp, "--requests", "2",
             "--warmup", "0", "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        s = json.loads(out.stdout)["settings"]
        assert s["input_tokens"] + s["max_new_tokens"] <= 100
        out = subprocess.run(
            [sys.executable, "-m", "lmiflow", "bench", "--url", comp, "--input-tokens", "90",
             "--max-new-tokens", "20"], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 2
        assert out.stderr.startswith("lmiflow: error: --input-tokens: 90 input + 20 new")


@pytest.mark.parametrize(("argv", "flag"), [
    (["--url", "ftp://x/y"], "--url"),
    (["--url", "http://127.0.0.1:9/", "--concurrency", "1,x"], "--concurrency"),
    (["--url", "http://127.0.0.1:9/", "--concurrency", "0"], "--concurrency"),
    (["--url", "http://127.0.0.1:9/", "--requests", "0"], "--requests"),
    (["--url", "http://127.0.0.1:9/", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--url", "http://127.0.0.1:9/", "--usd-per-hour", "-1"], "--usd-per-hour"),
    (["--url", "http://127.0.0.1:9/", "--rate", "0"], "--rate"),
    (["--url", "http://127.0.0.1:9/", "--repeats", "0"], "--repeats"),
    (["--url", "http://127.0.0.1:9/", "--gate", "ttft_ms:value<=3"], "--gate"),
    (["--url", "http://127.0.0.1:9/", "--gate", "latency<3"], "--gate"),
    (["--url", "http://127.0.0.1:9/", "--target", "sagemaker"], "--target"),
    (["--url", "http://127.0.0.1:9/", "--header", "no colon"], "--header"),
    (["--url", "http://127.0.0.1:9/", "--prompts", "/nope.jsonl"], "--prompts"),
    (["--endpoint", "x", "--target", "nowhere"], "--target"),
])
def test_cli_bad_flags_exit_2_naming_the_flag(argv, flag, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lmiflow: error: {flag}") and "Traceback" not in err


def test_cli_help_defines_ttft_and_tpot(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "TTFT = time of the first non-empty token chunk" in text
    assert "TPOT = (E2E − TTFT) / (output tokens − 1)" in text


@pytest.mark.slow
def test_cli_table_fits_80_columns_and_gate_sets_the_exit_code(url, capsys):
    rc = main(["bench", "--url", url, "--concurrency", "2", "--requests", "4", "--warmup", "0",
               "--max-new-tokens", "3", "--gate", "ttft_ms:p50<=1"])
    out = capsys.readouterr().out
    assert rc == 1  # a 60 ms TTFT cannot meet a 1 ms gate
    assert "TTFT" in out and "verdict: FAIL" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert main(["bench", "--url", url, "--concurrency", "2", "--requests", "4",
                 "--max-new-tokens", "3", "--gate", "ttft_ms:p50<=5000"]) == 0


def test_cli_all_failed_exits_1(capsys):
    rc = main(["bench", "--url", "http://127.0.0.1:9/invocations", "--requests", "1",
               "--warmup", "0", "--json"])
    assert rc == 1
    assert json.loads(capsys.readouterr().out)["levels"][0]["error_rate"] == 1.0


@pytest.mark.slow
def test_cli_json_into_a_closed_pipe_is_quiet(url):
    cmd = (f"{sys.executable} -m lmiflow bench --url {url} --requests 2 --warmup 0 "
           "--max-new-tokens 2 --json | head -c 10")
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


@pytest.mark.slow
def test_cli_named_endpoint_uses_configured_target(monkeypatch, capsys):
    from lmiflow import targets

    class Described(FakeTarget):
        def describe(self, name):
            return super().describe(name) if name == "prod" else None

        def model_files(self, endpoint, dest, names):
            from lmiflow.targets.base import ModelFiles

            return ModelFiles(directory=dest, properties={"option.max_model_len": "20"})

    made = []

    def configured_target(kind, **kwargs):
        made.append(kind)
        return Described()

    monkeypatch.setattr(targets, "configured_target", configured_target, raising=False)
    assert main(["bench", "--endpoint", "nope", "--concurrency", "1"]) == 2
    assert "--endpoint" in capsys.readouterr().err
    # max_model_len 20 from the endpoint's serving.properties: the defaults shrink to fit
    rc = main(["bench", "--endpoint", "prod", "--target", "local", "--concurrency", "2",
               "--requests", "2", "--warmup", "0", "--json"])
    assert rc == 0 and made == ["local", "local"]
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["source"] == "fake:prod" and data["levels"][0]["errors"] == 0
    assert data["settings"]["input_tokens"] + data["settings"]["max_new_tokens"] <= 20
    assert main(["bench", "--endpoint", "prod", "--max-new-tokens", "30"]) == 2
    assert "max_model_len 20" in capsys.readouterr().err


class UrlTarget:
    """A Target whose endpoints are URLs (like the local target's servers)."""

    kind = "fake"

    def __init__(self, urls):
        import httpx

        self.urls = urls
        self.http = httpx.Client(timeout=30)  # one pool, as the local target keeps

    def reserve_invocations(self, n):
        pass

    def invoke_stream(self, name, payload, timeout_s=None):
        with self.http.stream("POST", self.urls[name], json=payload) as resp:
            yield from (line.encode() for line in resp.iter_lines() if line.strip())


@pytest.mark.slow
def test_production_measured_beside_the_candidate_in_the_same_run():
    from lmiflow.bench.gates import evaluate

    with serve_in_subprocess(ttft_ms=300, tpot_ms=5) as slow, \
            serve_in_subprocess(ttft_ms=20, tpot_ms=5) as fast:
        target = UrlTarget({"cand": slow, "prod": fast})
        res = bench_endpoint(target, "cand", cfg(concurrency=[2], requests=4, warmup=0,
                                                 repeats=2), find_tokenizer=False,
                             production="prod")
    prod = res.production
    assert prod is not None and prod.settings.source == "fake:prod"
    assert res.settings.interleaved_with == ["fake:prod"]
    # the same client overhead on both (a busy machine adds plenty): only the order is sure
    assert 20 < prod.levels[0].ttft_ms.p50 < res.levels[0].ttft_ms.p50
    assert res.levels[0].ttft_ms.p50 > 300
    assert len(res.levels[0].repeats) == len(prod.levels[0].repeats) == 2
    v = evaluate([], res, baseline=prod, max_regression_pct=50)
    ttft = next(c for c in v.checks if c.metric == "ttft_ms")
    assert "paired" in ttft.method and ttft.worsening > 2


@pytest.mark.slow
def test_open_loop_duration_bounds_a_level(url):
    res = bench_url(url, cfg(concurrency=[], rates=[10.0], requests=500, warmup=0,
                             duration_s=0.5, max_new_tokens=2))
    lv = res.levels[0]
    expected = len(arrivals(500, 10.0, seed=0, duration_s=0.5))  # level 0's schedule
    assert res.settings.mode == "open" and lv.requests == expected < 20 and lv.errors == 0
