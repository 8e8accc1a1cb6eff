"""The teardown flow deletes under the endpoint's lock, as `lmiflow endpoints delete` does: a
deploy of the endpoint running meanwhile would otherwise create production again."""

from __future__ import annotations

from pathlib import Path

from lmiflow.flows import deploy as flows

from lmiflow.spec import load_spec
from tests.call_log import LoggedLock

ROOT = Path(__file__).resolve().parents[2]


def test_teardown_runs_while_the_endpoint_is_locked(monkeypatch):
    spec = load_spec(str(ROOT / "configs" / "local-demo.yaml"))
    calls: list[str] = []
    monkeypatch.setattr(flows.steps, "endpoint_lock",
                        lambda spec, run_id: LoggedLock(calls))
    monkeypatch.setattr(flows.steps, "teardown",
                        lambda spec: calls.append("teardown") or ["endpoint x"])
    monkeypatch.setattr(flows, "_run_id", lambda: None)
    assert flows.teardown_llm.fn(spec) == ["endpoint x"]
    assert calls == ["lock", "teardown", "release"]
