"""The local model server: LMI contract, streaming, batching, limits, and its option rules."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lmiflow.serving.engine import Sampling
from lmiflow.serving.options import OptionError, env_entries, load_options
from lmiflow.serving.schema import (
    BadRequest,
    GenerationParameters,
    chat_sampling,
    lmi_sampling,
    parse_invocation,
)

ROOT = Path(__file__).resolve().parents[2]

# ---- pure: options and request schema --------------------------------------------------------


def test_options_file_wins_over_env_and_cpu_only_keys_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "serving.properties").write_text(
        "engine=Python\noption.max_rolling_batch_size=4\noption.tensor_parallel_degree=max\n"
        "option.rolling_batch=vllm\noption.dtype=bf16\n"
    )
    env = {"OPTION_MAX_ROLLING_BATCH_SIZE": "64", "OPTION_MAX_MODEL_LEN": "1024", "HOME": "/x"}
    opts = load_options(tmp_path, env)
    assert opts.engine.max_rolling_batch_size == 4  # the file wins
    assert opts.engine.max_model_len == 1024  # env fills what the file leaves out
    assert opts.engine.dtype == "bf16"
    assert opts.engine.model_path == str(tmp_path)  # no model_id: weights sit in the dir
    assert opts.ignored == ["engine", "option.rolling_batch", "option.tensor_parallel_degree"]
    assert env_entries(env) == {"option.max_rolling_batch_size": "64",
                                "option.max_model_len": "1024"}


def test_model_id_relative_absolute_hub_and_missing(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    props = tmp_path / "serving.properties"
    props.write_text("option.model_id=weights\n")
    assert load_options(tmp_path).engine.model_path == str((tmp_path / "weights").resolve())
    props.write_text(f"option.model_id={tmp_path / 'weights'}\n")
    assert load_options(tmp_path).engine.model_path == str((tmp_path / "weights").resolve())
    props.write_text("option.model_id=org/some-model\n")
    assert load_options(tmp_path).engine.model_path == "org/some-model"
    props.write_text("option.model_id=./nope\n")
    with pytest.raises(OptionError, match="no such directory"):
        load_options(tmp_path)
    props.write_text("option.model_id=s3://bucket/prefix/\n")
    with pytest.raises(OptionError, match="s3://"):
        load_options(tmp_path)


@pytest.mark.parametrize("line, match", [
    ("option.dtype=int3", "option.dtype"),
    ("option.max_rolling_batch_size=0", "option.max_rolling_batch_size"),
    ("option.max_model_len=lots", "option.max_model_len"),
])
def test_bad_option_values_name_the_key(tmp_path: Path, line: str, match: str) -> None:
    (tmp_path / "serving.properties").write_text(line + "\n")
    with pytest.raises(OptionError, match=match):
        load_options(tmp_path)


def test_request_schema_rejects_unknown_and_out_of_range_parameters() -> None:
    with pytest.raises(BadRequest, match=r"parameters\.foo: unknown field"):
        parse_invocation({"inputs": "x", "parameters": {"foo": 1}})
    with pytest.raises(BadRequest, match="top_p"):
        parse_invocation({"inputs": "x", "parameters": {"top_p": 1.5}})
    with pytest.raises(BadRequest, match="max_new_tokens"):
        parse_invocation({"inputs": "x", "parameters": {"max_new_tokens": 0}})
    with pytest.raises(BadRequest, match="inputs: required"):
        parse_invocation({"parameters": {}})
    with pytest.raises(BadRequest, match="JSON object"):
        parse_invocation(["x"])
    with pytest.raises(BadRequest, match="repetition_penalty"):
        parse_invocation({"inputs": "x", "parameters": {"repetition_penalty": 1.2}})
    with pytest.raises(BadRequest, match="n"):
        parse_invocation({"messages": [{"role": "user", "content": "x"}], "n": 2})


def test_sampling_follows_lmi_and_openai_defaults() -> None:
    greedy = Sampling(temperature=1.0, top_k=1, top_p=1.0)
    assert lmi_sampling(GenerationParameters(), 500) == greedy  # LMI: greedy by default
    assert lmi_sampling(GenerationParameters(do_sample=False, temperature=0.5), 500) == greedy
    assert lmi_sampling(GenerationParameters(temperature=0.7), 500) == Sampling(0.7, 500, 1.0)
    assert lmi_sampling(GenerationParameters(do_sample=True, top_k=5, top_p=0.9), 500) == \
        Sampling(1.0, 5, 0.9)
    chat = parse_invocation({"messages": [{"role": "user", "content": "x"}]})
    assert chat_sampling(chat, 500) == Sampling(1.0, 500, 1.0)  # OpenAI: samples at T=1
    chat0 = parse_invocation({"messages": [{"role": "user", "content": "x"}], "temperature": 0})
    assert chat_sampling(chat0, 500) == greedy


def test_failure_marker_is_the_one_the_local_target_reads() -> None:
    from lmiflow.serving.server import FAILED_MARK as server_mark
    from lmiflow.targets.processes import FAILED_MARK as target_mark

    assert server_mark == target_mark


def test_refuses_to_bind_anything_but_loopback(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "lmiflow.serving.server", "--model-dir", str(tmp_path),
         "--port", "1", "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert res.returncode == 2
    assert "loopback only" in res.stderr


# ---- the HTTP layer over a scripted engine (fast: no torch) ---------------------------------


class _ScriptedEngine:
    """Engine stand-in: emits token ids 1..n, then fails after `fail_after` tokens if set."""

    vocab_size, max_model_len, device = 100, 64, "cpu"

    def __init__(self, fail_after: int | None = None, chat_template: bool = True,
                 delay_s: float = 0.0):
        self.fail_after = fail_after
        self.has_chat_template = chat_template
        self.delay_s = delay_s
        self.aborted: str | None = None
        self.closed = 0

    def abort(self, reason: str) -> None:
        self.aborted = reason

    def alive(self) -> bool:
        return True

    def stats(self) -> dict:
        return {"forward_passes": 0}

    def encode(self, text: str) -> list[int]:
        return [0] * len(text.split())

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return [0] * len(messages)

    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)

    def detokenizer(self):
        class T:
            def step(self, i: int) -> str:
                return f"<{i}>"
        return T()

    async def generate(self, ids, max_new, sampling, stream=True):
        import asyncio

        from lmiflow.serving.engine import EngineError, Step

        try:
            for i in range(1, max_new + 1):
                await asyncio.sleep(self.delay_s)
                if self.aborted:
                    raise EngineError(self.aborted)
                if self.fail_after is not None and i > self.fail_after:
                    raise EngineError("device on fire")
                yield Step(i, -0.5, "length" if i == max_new else None)
        finally:
            self.closed += 1


def _state(engine: object, **kw: object):
    from lmiflow.serving.engine import EngineOptions
    from lmiflow.serving.options import ServerOptions
    from lmiflow.serving.state import ServerState

    state = ServerState(Path("."), **{"max_body_bytes": 1000, **kw})  # type: ignore[arg-type]
    state.options = ServerOptions(engine=EngineOptions(model_path="x", max_rolling_batch_size=2),
                                  model_source="x")
    state.engine = engine  # type: ignore[assignment]
    return state


def _client(engine: object, **kw: object):
    from starlette.testclient import TestClient

    from lmiflow.serving.server import build_app

    return TestClient(build_app(_state(engine, **kw)))


@contextlib.contextmanager
def _live(engine: object, drain_s: float = 0.0, **kw: object) -> Iterator[tuple[object, str]]:
    """The app under the server main() runs, in a thread, over real sockets (the test client
    can neither stall a body halfway nor stop a server)."""
    from lmiflow.serving.server import http_server

    server = http_server(_state(engine, **kw), "127.0.0.1", _free_port(), drain_s)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield server, f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_not_ready_is_503_on_ping_and_invocations() -> None:
    from starlette.testclient import TestClient

    from lmiflow.serving.server import build_app
    from lmiflow.serving.state import ServerState

    client = TestClient(build_app(ServerState(Path("."))))
    assert client.get("/ping").status_code == 503
    r = client.post("/invocations", json={"inputs": "x"})
    assert r.status_code == 503 and r.json()["code"] == 424


def test_engine_error_before_first_token_is_424_after_it_a_last_line() -> None:
    early = _client(_ScriptedEngine(fail_after=0))
    r = early.post("/invocations", json={"inputs": "a b", "stream": True})
    assert r.status_code == 424 and "device on fire" in r.json()["error"]
    r = early.post("/invocations", json={"inputs": "a b"})
    assert r.status_code == 424

    late = _client(_ScriptedEngine(fail_after=2))
    r = late.post("/invocations", json={"inputs": "a b", "stream": True,
                                        "parameters": {"max_new_tokens": 5}})
    assert r.status_code == 200  # LMI: the status went out with the first token
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [x["token"]["id"] for x in lines] == [1, 2, -1]
    assert lines[-1]["details"]["finish_reason"] == "error"
    assert lines[-1]["generated_text"] == "<1><2>" and lines[-1]["code"] == 424


def test_chat_needs_a_template_and_stop_sequences_cut_the_text() -> None:
    r = _client(_ScriptedEngine(chat_template=False)).post(
        "/invocations", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "chat template" in r.json()["error"]
    engine = _ScriptedEngine()
    r = _client(engine).post("/invocations", json={
        "inputs": "a", "parameters": {"max_new_tokens": 9, "stop_sequences": ["<3>"],
                                      "details": True}})
    body = r.json()
    assert body["generated_text"] == "<1><2>"
    assert body["details"]["finish_reason"] == "stop_sequence"
    assert body["details"]["generated_tokens"] == 3
    assert engine.closed == 1  # the engine request was closed (cancelled) at the stop


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    client = _client(_ScriptedEngine(), max_body_bytes=1 << 20)
    client.raise_server_exceptions = False  # a crash must show as the status a client sees
    for depth in (100_000, 65):  # past the parser's recursion limit; past ours
        body = b'{"inputs": "x", "parameters": {"seed": ' + b"[" * depth + b"]" * depth + b"}}"
        r = client.post("/invocations", content=body)
        assert r.status_code == 400, (depth, r.status_code)
        assert r.json() == {"error": "request body nests deeper than 64 levels", "code": 424}
    ok = client.post("/invocations", json={"inputs": "a", "parameters": {"max_new_tokens": 2}})
    assert ok.status_code == 200


def test_a_body_that_stops_arriving_gets_408() -> None:
    with _live(_ScriptedEngine(), body_timeout_s=0.5) as (server, _url), \
            socket.create_connection(("127.0.0.1", server.config.port), timeout=20) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     b'{"inputs": "half')  # ... and the other 84 bytes never come
        answer = _whole_response(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body not received within 0.5 s" in answer


def _whole_response(sock: socket.socket) -> bytes:
    """The status line, headers and Content-Length bytes of body: one recv() may return the
    head alone (they are sent apart; on a busy machine they arrive apart)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        if not chunk or (sep and length and len(body) >= int(length.group(1))):
            return data


def test_sigterm_ends_a_running_stream_with_an_error_line() -> None:
    import signal as sig

    engine = _ScriptedEngine(delay_s=0.05)
    with _live(engine, drain_s=0.2) as (server, url):
        body = {"inputs": "a", "stream": True, "parameters": {"max_new_tokens": 60}}
        with httpx.stream("POST", url + "/invocations", json=body, timeout=20) as r:
            lines = r.iter_lines()
            first = [json.loads(next(lines)) for _ in range(2)]
            server.handle_exit(sig.SIGTERM, None)  # what uvicorn's SIGTERM handler does
            rest = [json.loads(x) for x in lines]  # a cut connection would raise here
    tokens = first + rest[:-1]
    assert [t["token"]["id"] for t in tokens] == list(range(1, len(tokens) + 1))
    assert len(tokens) < 60  # ended early ...
    assert rest[-1]["details"]["finish_reason"] == "error"  # ... and said so
    assert rest[-1]["error"] == "the server is shutting down" and rest[-1]["code"] == 424
    assert engine.closed == 1


# ---- a real server on the demo model -----------------------------------------------------------

MAX_MODEL_LEN = 512
MAX_BATCH = 8
MAX_BODY = 64 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, first_ping: int | None):
        self.proc, self.port, self.log, self.first_ping = proc, port, log, first_ping
        self.url = f"http://127.0.0.1:{port}"

    def post(self, body: object, **kw: object) -> httpx.Response:
        return httpx.post(self.url + "/invocations", json=body, timeout=60, **kw)

    def stats(self) -> dict:
        return httpx.get(self.url + "/debug/stats", timeout=5).json()


def _boot(factory: pytest.TempPathFactory, tmp: Path, max_model_len: int, *args: str
          ) -> Server:
    """A real server on the demo model, healthy (the first /ping status is kept)."""
    pytest.importorskip("torch")
    from tests.session_files import session_demo_model

    weights = session_demo_model(factory)
    model_dir = tmp / "model"
    model_dir.mkdir()
    (model_dir / "serving.properties").write_text(
        f"engine=Python\noption.model_id={weights}\noption.max_rolling_batch_size={MAX_BATCH}\n"
        f"option.max_model_len={max_model_len}\noption.tensor_parallel_degree=1\n"
    )
    port = _free_port()
    log = model_dir / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmiflow.serving.server", "--model-dir", str(model_dir),
             "--port", str(port), *args],
            stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        )
    first, deadline = None, time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            code = httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code
        except httpx.HTTPError:
            time.sleep(0.05)
            continue
        first = first or code
        if code == 200:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("server did not become healthy:\n" + log.read_text())
    return Server(proc, port, log, first)


def _stop(server: Server) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    server.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for the module's tests (a boot is 3-5 s of CPU): they carry
    xdist_group("serving-server"), so one xdist worker boots it, not each."""
    srv = _boot(tmp_path_factory, tmp_path_factory.mktemp("shared"), MAX_MODEL_LEN,
                "--max-body-bytes", str(MAX_BODY))
    yield srv
    _stop(srv)


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_ping_is_503_while_loading_then_200(server: Server) -> None:
    # The server listens before the model is loaded (torch alone takes seconds to import).
    assert server.first_ping == 503
    assert httpx.get(server.url + "/ping").status_code == 200
    log = server.log.read_text()
    assert "option.tensor_parallel_degree ignored" in log
    assert "psutil" not in log  # noise a reader of the log would take for a failure


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_invoke_with_details_counts_tokens(server: Server) -> None:
    r = server.post({"inputs": "Hello world", "parameters": {"max_new_tokens": 12,
                                                             "details": True}})
    assert r.status_code == 200, r.text
    body = r.json()
    d = body["details"]
    assert d["finish_reason"] in ("length", "eos_token")
    assert d["generated_tokens"] == 12 or d["finish_reason"] == "eos_token"
    assert d["inputs"] == "Hello world"
    assert d["inputs_tokens"] == 4  # <s> + 3 BPE tokens of the demo tokenizer
    assert len(d["tokens"]) == d["generated_tokens"]
    assert "".join(t["text"] for t in d["tokens"]) == body["generated_text"]
    plain = server.post({"inputs": "Hello world", "parameters": {"max_new_tokens": 12}}).json()
    assert plain == {"generated_text": body["generated_text"]}  # greedy: same text again
    full = server.post({"inputs": "Hello world",
                        "parameters": {"max_new_tokens": 12, "return_full_text": True}}).json()
    assert full["generated_text"] == "Hello world" + body["generated_text"]


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_default_max_new_tokens_is_lmis_30(server: Server) -> None:
    d = server.post({"inputs": "Hi", "parameters": {"details": True}}).json()["details"]
    assert d["generated_tokens"] == 30 or d["finish_reason"] == "eos_token"


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_sampling_changes_output_and_gives_log_probs(server: Server) -> None:
    body = {"inputs": "Once upon a time", "stream": True,
            "parameters": {"max_new_tokens": 24, "do_sample": True, "temperature": 1.5}}
    runs = []
    for _ in range(3):
        lines = [json.loads(x) for x in server.post(body).text.splitlines()]
        runs.append(tuple(x["token"]["id"] for x in lines))
        # Near-uniform random weights: every sampled token is far from certain.
        assert all(x["token"]["log_prob"] < -1.0 for x in lines)
    assert len(set(runs)) > 1


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_stream_sends_tokens_one_by_one(server: Server) -> None:
    n = 200
    body = {"inputs": "Streaming test", "stream": True, "parameters": {"max_new_tokens": n}}
    t0 = time.perf_counter()
    arrivals, lines = [], []
    with httpx.stream("POST", server.url + "/invocations", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/jsonlines")
        for line in r.iter_lines():
            arrivals.append(time.perf_counter() - t0)
            lines.append(json.loads(line))
    assert len(lines) == n
    assert all(set(x["token"]) >= {"id", "text", "log_prob"} for x in lines)
    last = lines[-1]
    assert last["generated_text"] == "".join(x["token"]["text"] for x in lines)
    assert last["details"]["generated_tokens"] == n
    assert "generated_text" not in lines[0]
    total = arrivals[-1]
    # Real streaming: the first token arrives early and the rest spread over the run,
    # not in one burst at the end.
    assert arrivals[0] < 0.5 * total
    assert arrivals[n // 2] < 0.9 * total


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_stop_sequence_ends_generation_early(server: Server) -> None:
    free = server.post({"inputs": "Hello world",
                        "parameters": {"max_new_tokens": 40, "details": True}}).json()
    text = free["generated_text"]
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip(), text
    r = server.post({"inputs": "Hello world", "parameters": {
        "max_new_tokens": 40, "details": True, "stop_sequences": [stop]}}).json()
    assert r["details"]["finish_reason"] == "stop_sequence"
    assert r["generated_text"] == text[: text.find(stop)]
    assert r["details"]["generated_tokens"] < 40


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_chat_form_uses_the_template_and_answers_openai_style(server: Server) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    r = server.post({"messages": msgs, "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("length", "eos_token")
    # <s><|system|>Be brief.<|end|><|user|>Hi!<|end|><|assistant|>: counted by the template
    assert body["usage"]["prompt_tokens"] > 6
    assert body["usage"]["completion_tokens"] == 6 or choice["finish_reason"] == "eos_token"
    s = server.post({"messages": msgs, "max_tokens": 6, "temperature": 0, "stream": True})
    chunks = [json.loads(x) for x in s.text.splitlines()]
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * len(chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert streamed == choice["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]


@pytest.mark.slow
@pytest.mark.parametrize("body, status, match", [
    ({"inputs": "x", "parameters": {"top_p": 3}}, 400, "top_p"),
    ({"inputs": "x", "parameters": {"bogus": True}}, 400, "bogus"),
    ({"inputs": "x", "parameters": {"max_new_tokens": MAX_MODEL_LEN}}, 400, "max_model_len"),
    ({"inputs": "word " * 600}, 400, "max_model_len"),
    ({"inputs": "x", "stream": True, "parameters": {"temperature": -1}}, 400, "temperature"),
    ({"messages": []}, 400, "messages"),
])
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_bad_requests_get_4xx_with_code_424(server: Server, body: dict, status: int,
                                            match: str) -> None:
    r = server.post(body)
    assert r.status_code == status
    err = r.json()
    assert err["code"] == 424
    assert match in err["error"]


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_body_over_the_limit_is_413_and_bad_json_is_400(server: Server) -> None:
    big = server.post({"inputs": "x" * (MAX_BODY + 10)})
    assert big.status_code == 413 and big.json()["code"] == 424
    bad = httpx.post(server.url + "/invocations", content=b"{nope", timeout=10)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    # Without Content-Length (chunked upload), the limit still holds.
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"y" * 1024
        yield b'"}'
    chunked = httpx.post(server.url + "/invocations", content=chunks(), timeout=10)
    assert chunked.status_code == 413
    assert httpx.get(server.url + "/ping").status_code == 200


def _passes(server: Server) -> int:
    return server.stats()["forward_passes"]


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_concurrent_requests_share_forward_passes(server: Server) -> None:
    n, tokens = 6, 32
    body = {"inputs": "Batch me", "parameters": {"max_new_tokens": tokens, "details": True}}

    before = _passes(server)
    for _ in range(n):
        assert server.post(body).json()["details"]["generated_tokens"] == tokens
    sequential = _passes(server) - before

    results: list[dict] = []
    barrier = threading.Barrier(n)

    def one() -> None:
        barrier.wait()
        results.append(server.post(body).json())

    before = _passes(server)
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    concurrent = _passes(server) - before
    assert [r["details"]["generated_tokens"] for r in results] == [tokens] * n
    assert len({r["generated_text"] for r in results}) == 1  # batching does not change greedy
    assert sequential >= n * tokens
    # shared: without batching it would be `sequential`; how much depends on when the
    # threads arrive on a loaded machine (exactly half was seen once in CI)
    assert concurrent <= sequential * 2 / 3, (concurrent, sequential)


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_client_disconnect_mid_stream_frees_its_slot(server: Server) -> None:
    body = {"inputs": "Long one", "stream": True, "parameters": {"max_new_tokens": 450}}
    with httpx.stream("POST", server.url + "/invocations", json=body, timeout=60) as r:
        it = r.iter_lines()
        for _ in range(3):
            next(it)
        assert server.stats()["in_flight"] == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = server.stats()
        if s["in_flight"] == 0 and s["engine_active"] == 0 and s["engine_requests"] == 0:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"slot still held after the client left: {s}")
    # Generation stopped too: no more forward passes once nothing is in flight.
    p0 = _passes(server)
    time.sleep(0.3)
    assert _passes(server) == p0


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_non_stream_client_that_gives_up_frees_its_slot(server: Server) -> None:
    body = {"inputs": "Long one", "parameters": {"max_new_tokens": 450}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/invocations", json=body, timeout=0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = server.stats()
        if s["in_flight"] == 0 and s["engine_requests"] == 0:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"slot still held after the client left: {s}")


@pytest.mark.slow
@pytest.mark.xdist_group("serving-server")  # one `server` (module fixture)
def test_more_requests_than_slots_queue_and_all_finish(server: Server) -> None:
    n = MAX_BATCH + 4
    body = {"inputs": "Queue", "parameters": {"max_new_tokens": 8, "details": True}}
    peak = 0
    results: list[int] = []

    def one() -> None:
        results.append(server.post(body).status_code)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    ping_s = []
    while any(t.is_alive() for t in threads):
        peak = max(peak, server.stats()["engine_active"])
        t0 = time.perf_counter()
        assert httpx.get(server.url + "/ping", timeout=2).status_code == 200
        ping_s.append(time.perf_counter() - t0)
    assert results == [200] * n
    assert peak <= MAX_BATCH
    assert max(ping_s) < 1.0  # SageMaker wants /ping within 2 s, also under load


@pytest.mark.slow
def test_sigterm_mid_stream_ends_it_with_an_error_line(tmp_path: Path, tmp_path_factory
                                                       ) -> None:
    srv = _boot(tmp_path_factory, tmp_path, 2048, "--drain-s", "0")
    try:
        body = {"inputs": "Last words", "stream": True, "parameters": {"max_new_tokens": 2000}}
        with httpx.stream("POST", srv.url + "/invocations", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = [json.loads(next(lines)) for _ in range(3)]
            os.kill(srv.proc.pid, signal.SIGTERM)
            rest = [json.loads(x) for x in lines]  # a cut connection would raise here
        last = rest[-1]
        assert last["details"]["finish_reason"] == "error"
        assert last["error"] == "the server is shutting down"
        tokens = first + rest[:-1]
        assert last["generated_text"] == "".join(t["token"]["text"] for t in tokens)
        assert len(tokens) < 2000
        srv.proc.wait(timeout=30)  # and the server exits (TimeoutExpired if not)
    finally:
        _stop(srv)
