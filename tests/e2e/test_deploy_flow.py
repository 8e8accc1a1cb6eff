"""The deploy flow with the demo model, under a Prefect test harness: promotion, blue/green
redeploy, rejection and a failed endpoint on the local target; transient-fault retries and a
permanent fault on the in-memory target (control flow: no model server needed)."""

from __future__ import annotations

import asyncio
import json

import pytest

from lmiflow.targets.processes import process_alive
from tests.e2e.flows import make_spec, prefect_api_env, run

pytestmark = pytest.mark.slow


def _artifacts(prefix: str) -> list:
    """Every artifact whose key starts with prefix. Filtered by the server: an unfiltered
    read returns only the API's default page (200), which the session's other e2e tests fill."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as c:
            return await c.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))

    return [a for a in asyncio.run(read()) if a.key and a.key.startswith(prefix)]


def artifact_keys(prefix: str) -> set[str]:
    return {a.key for a in _artifacts(prefix)}


PLANTED_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTEDKEY"
PLANTED_HF_TOKEN = "hf_PlantedTokenAbCdEfGhIjKlMnOpQrStUvWx"


def artifact_texts(prefix: str) -> str:
    return "\n".join(f"{a.data} {a.description}" for a in _artifacts(prefix))


def test_promote_then_blue_green_redeploy_then_reject(prefect_harness, demo_model, state_dir,
                                                      tmp_path, monkeypatch, capfd):
    from lmiflow.targets.local import LocalTarget

    # Secrets planted where a careless pipeline would leak them: the environment and an error.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED_AWS_SECRET)
    monkeypatch.setenv("HF_TOKEN", PLANTED_HF_TOKEN)

    target = LocalTarget(state_dir)
    scaling = {"autoscaling": {"min": 1, "max": 2, "scale_in_cooldown_s": 60,
                               "scale_out_cooldown_s": 0}}
    spec = make_spec(demo_model, **scaling)
    state, report = run(spec, tmp_path / "r1")
    assert state.is_completed(), report["error"]
    assert report["status"] == "promoted"
    from lmiflow.run_record import STEP_NAMES

    assert [s["name"] for s in report["steps"]] == list(STEP_NAMES)
    assert [s["status"] for s in report["steps"]] == ["completed"] * len(STEP_NAMES)
    names = [s["name"] for s in report["steps"]]
    assert names[3:7] == ["render_serving_properties", "preflight", "stage_weights",
                          "create_model"]
    assert report["weights"]["delivery"] == "local"  # the demo model is on this machine
    assert report["smoke_test"]["passed"]
    assert report["gate"]["passed"] and report["gate"]["checks"]
    assert {lv["concurrency"] for lv in report["benchmark"]["levels"]} == {1, 2}
    assert "option.max_model_len=144" in report["serving_properties"]
    # A fixed-length gate run: every request exactly 8 tokens out, 16 in (the model's tokens).
    bench = report["benchmark"]
    assert bench["settings"]["fixed_length"] == "ignore_eos_token"
    assert bench["settings"]["prompt_tokens_exact"]
    for lv in bench["levels"]:
        assert lv["output_length_mismatches"] == 0 and lv["errors"] == 0
        assert (lv["output_length"]["min"], lv["output_length"]["max"]) == (8, 8)
        assert (lv["input_length"]["min"], lv["input_length"]["max"]) == (16, 16)
        assert lv["token_count_mismatches"] == 0
    for f in ("report.json", "report.md", "report.html"):
        assert (tmp_path / "r1" / f).is_file()
    # On this machine's CPU the planner has no latency prediction, so nothing is calibrated.
    why = "no latency prediction for CPU (no accelerator facts): nothing compared or recorded"
    assert report["calibration"]["notes"] == [why] and report["calibration"]["recorded"] == 0
    assert why in (tmp_path / "r1" / "report.md").read_text().split(
        "## Predicted vs measured")[1]
    assert not (state_dir / "calibration.json").exists()
    # autoscaling from the plan: a batch of 4 per copy (concurrency 4 on one copy), less 20 %
    assert report["autoscaling"]["target_per_copy"] == 3
    assert report["autoscaling_applied"]
    scaler = target._read()["endpoints"]["e2e-demo"]["scaler"]
    assert process_alive(scaler)
    prod = target.describe("e2e-demo")
    assert prod.status == "InService"
    first_config = prod.config_name
    assert first_config.startswith("e2e-demo-ec-")
    # the candidate endpoint is gone; production serves the candidate's config.
    res = target.list_resources("e2e-demo")
    assert res["endpoints"] == ["e2e-demo"]
    assert json.loads(target.invoke("e2e-demo", {"inputs": "hi",
                                                 "parameters": {"max_new_tokens": 2}}))
    # `lmiflow bench --endpoint` with default flags: the endpoint's own tokenizer and its
    # max_model_len (144) set the lengths, and every request succeeds.
    from lmiflow.cli import main

    capfd.readouterr()
    assert main(["bench", "--endpoint", "e2e-demo", "--requests", "2", "--json"]) == 0
    cli = json.loads(capfd.readouterr().out)
    assert cli["settings"]["tokenizer"] == str(demo_model)
    assert cli["settings"]["input_tokens"] + cli["settings"]["max_new_tokens"] <= 144
    assert cli["levels"][0]["errors"] == 0 and cli["levels"][0]["output_length_mismatches"] == 0
    keys = artifact_keys("e2e-demo-")
    assert {"e2e-demo-fetch-config", "e2e-demo-choose-instance", "e2e-demo-benchmark-levels",
            "e2e-demo-gate", "e2e-demo-promote", "e2e-demo-report"} <= keys

    # Redeploy with another workload: a new candidate, blue/green update, old config removed,
    # and the first run's benchmark is now the baseline for the regression check.
    # The check must be there; whether it passes is the machine's business (under make test
    # the other xdist worker may be loading a model meanwhile): a generous noise floor.
    spec2 = make_spec(demo_model, **{"workload.concurrency": 2,
                                     "regression.max_regression_pct": 1000,
                                     "regression.noise_floor_pct": 1000}, **scaling)
    state, report2 = run(spec2, tmp_path / "r2")
    assert state.is_completed(), report2["error"]
    # the same scaler keeps scaling through the blue/green update, on the new target (2 x 0.8)
    assert target._read()["endpoints"]["e2e-demo"]["scaler"] == scaler
    assert target._read()["endpoints"]["e2e-demo"]["autoscaling"]["target_per_copy"] == 1
    assert report2["promotion"]["action"].startswith("updated")
    prod2 = target.describe("e2e-demo")
    assert prod2.config_name != first_config and prod2.status == "InService"
    assert any(c["kind"] == "regression" for c in report2["gate"]["checks"])
    res = target.list_resources("e2e-demo")
    assert first_config not in res["endpoint_configs"]
    assert res["endpoints"] == ["e2e-demo"]

    # An impossible gate: rejected, candidate removed, production untouched.
    spec3 = make_spec(demo_model, gates=[
        {"metric": "ttft_ms", "stat": "p50", "op": "<=", "threshold": 0.001}])
    before = target.list_resources("e2e-demo")
    state, report3 = run(spec3, tmp_path / "r3")
    assert state.is_failed()
    assert report3["status"] == "rejected" and not report3["gate"]["passed"]
    assert report3["steps"][-1] == {**report3["steps"][-1], "name": "promote",
                                    "status": "skipped"}
    assert target.list_resources("e2e-demo") == before
    assert target.describe("e2e-demo").config_name == prod2.config_name
    assert len(report3["cleanup"]) == 3
    # It reads as a verdict, not a crash: production named and unchanged, the check, a next step.
    outcome = report3["outcome"]
    assert outcome["headline"].startswith("REJECTED by the gate")
    assert f"still serving {prod2.config_name} since " in outcome["headline"]
    assert outcome["reasons"] and outcome["next_steps"] and report3["error"] is None
    assert report3["production"]["config"] == prod2.config_name
    assert "Failed step" not in (tmp_path / "r3" / "report.md").read_text()
    assert outcome["headline"] in artifact_texts("e2e-demo-report")

    # No planted secret in any report file, artifact, log line or the local state.
    out = capfd.readouterr()
    texts = [out.out, out.err, artifact_texts("e2e-demo")]
    texts += [p.read_text(errors="replace") for p in tmp_path.rglob("report.*")]
    texts += [p.read_text(errors="replace") for p in state_dir.rglob("*") if p.is_file()
              and p.suffix in (".json", ".log", ".properties")]
    for secret in (PLANTED_AWS_SECRET, PLANTED_HF_TOKEN):
        assert not any(secret in t for t in texts)


def test_failed_endpoint_is_removed_and_reported(prefect_harness, demo_model, state_dir,
                                                 tmp_path):
    from lmiflow.targets.local import LocalTarget

    broken = tmp_path / "broken-model"
    broken.mkdir()
    # config.json alone plans fine, but the server cannot load weights that are not there.
    (broken / "config.json").write_text((demo_model / "config.json").read_text())
    state, report = run(make_spec(broken, name="e2e-broken"), tmp_path / "r")
    assert state.is_failed()
    assert report["status"] == "failed" and report["failed_step"] == "create_endpoint"
    assert report["error"]
    steps = {s["name"]: s["status"] for s in report["steps"]}
    assert steps["create_endpoint"] == "failed" and steps["smoke_test"] == "skipped"
    assert LocalTarget(state_dir).list_resources("e2e-broken") == {
        "models": [], "endpoint_configs": [], "endpoints": []}


def test_transient_fault_is_retried(prefect_harness, demo_model, state_dir, tmp_path,
                                    monkeypatch, memory_flow_target):
    t = memory_flow_target  # control flow: no model server needed
    calls = {"n": 0}
    real = t.create_endpoint_config

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("connection reset by peer (injected)")
        return real(*a, **k)

    monkeypatch.setattr(t, "create_endpoint_config", flaky)
    state, report = run(make_spec(demo_model, name="e2e-retry"), tmp_path / "r")
    assert state.is_completed(), report["error"]
    assert calls["n"] == 3
    assert t.list_resources("e2e-retry")["endpoints"] == ["e2e-retry"]


def test_permanent_fault_is_not_retried(prefect_harness, demo_model, state_dir, tmp_path,
                                        monkeypatch, memory_flow_target):
    t = memory_flow_target  # control flow: no model server needed
    calls = {"n": 0}

    def broken(*a, **k):
        calls["n"] += 1
        raise ValueError("endpoint config rejected (injected) while using "
                         f"token {PLANTED_HF_TOKEN} aws_secret_access_key={PLANTED_AWS_SECRET}")

    monkeypatch.setattr(t, "create_endpoint_config", broken)
    state, report = run(make_spec(demo_model, name="e2e-perm"), tmp_path / "r")
    assert state.is_failed() and calls["n"] == 1
    assert report["failed_step"] == "configure_endpoint"
    assert "rejected (injected)" in report["error"]
    text = "".join(p.read_text() for p in (tmp_path / "r").glob("report.*"))
    assert PLANTED_HF_TOKEN not in text and PLANTED_AWS_SECRET not in text
    assert t.list_resources("e2e-perm") == {
        "models": [], "endpoint_configs": [], "endpoints": []}


def test_the_reports_plots_are_drawn_once_for_the_page_and_the_artifact(
        prefect_harness, demo_model, state_dir, tmp_path, monkeypatch, memory_flow_target):
    """report.html and the run's Markdown artifact show the same plots, drawn once: drawing
    them is most of what a report costs (about 0.6 s a time)."""
    import re

    from lmiflow.report import plots

    drawn: list[str] = []
    real = plots.all_plots

    def counted(report):
        drawn.append(report.endpoint)
        return real(report)

    monkeypatch.setattr(plots, "all_plots", counted)
    state, report = run(make_spec(demo_model, name="e2e-plots"), tmp_path / "r")
    assert state.is_completed(), report["error"]
    assert drawn == ["e2e-plots"]
    inline = re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+",
                        artifact_texts("e2e-plots-report"))
    html = (tmp_path / "r" / "report.html").read_text()
    assert inline and all(uri in html for uri in inline)


def test_cli_deploy_summary_fits_80_columns_without_a_terminal(prefect_harness, demo_model,
                                                               tmp_path):
    """What a CI log shows: no terminal, so 80 columns; no line longer, no command split. The
    deploy uses the session's Prefect API (its own temporary one: tests/e2e/test_interrupts)."""
    import os
    import subprocess
    import sys

    from lmiflow.targets.local import LocalTarget

    cfg = tmp_path / "demo.yaml"
    spec = make_spec(demo_model, name="e2e-cli").model_dump(mode="json", exclude_defaults=True)
    cfg.write_text(json.dumps(spec))  # JSON is YAML
    env = {**os.environ, "COLUMNS": "80", "LMIFLOW_STATE_DIR": str(tmp_path / "state"),
           **prefect_api_env()}
    try:
        r = subprocess.run([sys.executable, "-m", "lmiflow", "deploy", str(cfg), "--report-dir",
                            str(tmp_path / "r")], env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        lines = r.stderr.splitlines()
        assert max(len(line) for line in lines) <= 80, max(lines, key=len)
        assert lines[lines.index("try it:") + 1].endswith(
            "endpoints invoke e2e-cli 'Hello' --target local")
        assert any(line.startswith("PROMOTED: e2e-cli now serves e2e-cli-ec-") for line in lines)
    finally:
        t = LocalTarget(tmp_path / "state")
        for ep in t.list_endpoints():
            t.delete_endpoint(ep.name)
