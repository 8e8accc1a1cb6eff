"""prefect.yaml against a real Prefect server: deploy --all, schedules, the parameter form,
a parameterized run executed by a process worker, and its artifacts."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.session_files import seed_prefect_db, session_prefect_db

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def prefect_server(tmp_path, tmp_path_factory):
    # the server starts from a migrated database, as a user's does after its first start
    seed_prefect_db(session_prefect_db(tmp_path_factory), tmp_path / "home" / "prefect.db")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_PROFILES_PATH", None)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("prefect server did not start:\n" +
                            (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def prefect(env, *args, timeout=300):
    r = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_deploy_all_schedule_form_and_worker_run(prefect_server, tmp_path):
    env = prefect_server
    prefect(env, "work-pool", "create", "lmiflow-process", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all")

    from prefect.client.orchestration import PrefectClient

    async def inspect():
        async with PrefectClient(env["PREFECT_API_URL"]) as c:
            deps = {f"{(await c.read_flow(d.flow_id)).name}/{d.name}": d
                    for d in await c.read_deployments()}
            return deps

    deps = asyncio.run(inspect())
    assert {"redeploy-from-config/local-demo-nightly", "redeploy-from-config/deploy-from-ui",
            "deploy-llm/deploy-spec-from-ui", "plan-llm/plan-only",
            "redeploy-from-config/sagemaker-llama-3-1-8b-weekly"} <= set(deps)
    nightly = deps["redeploy-from-config/local-demo-nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"]
    assert nightly.schedules[0].active
    assert not deps["redeploy-from-config/sagemaker-llama-3-1-8b-weekly"].schedules[0].active
    # concurrency_limit 1: one run at a time touches the endpoint.
    assert nightly.global_concurrency_limit is not None
    assert nightly.global_concurrency_limit.limit == 1
    # The UI's short form: a config path and overrides, each described.
    short = deps["redeploy-from-config/deploy-from-ui"].parameter_openapi_schema["properties"]
    assert set(short) == {"config", "overrides", "report_dir"}
    assert all(p.get("description") for p in short.values())
    # The full form is the DeploymentSpec, every field with its description.
    full = deps["deploy-llm/deploy-spec-from-ui"].parameter_openapi_schema
    schema = json.dumps(full)
    assert "Production endpoint name" in schema and "Longest prompt, in tokens." in schema
    for model in full["definitions"].values():
        for name, field in model.get("properties", {}).items():
            assert field.get("description"), f"{model.get('title')}.{name} has no description"

    # A parameterized run through the API, executed by a process worker.
    report_dir = tmp_path / "plan-report"
    params = {"spec": {
        "name": "ui-plan",
        "model": {"id": "meta-llama/Llama-2-13b-hf", "dtype": "fp16"},
        "workload": {"max_input_tokens": 3072, "max_output_tokens": 1024, "concurrency": 8},
        "instance": {"allow": ["ml.g5.12xlarge"]},
        "target": {"kind": "sagemaker", "region": "us-east-1",
                   "role_arn": "arn:aws:iam::123456789012:role/SageMakerExecution",
                   "s3_uri": "s3://my-lmiflow-bucket/models/"}},
        "report_dir": str(report_dir)}

    async def create():
        async with PrefectClient(env["PREFECT_API_URL"]) as c:
            fr = await c.create_flow_run_from_deployment(deps["plan-llm/plan-only"].id,
                                                         parameters=params)
            return fr.id

    run_id = asyncio.run(create())
    prefect(env, "worker", "start", "--pool", "lmiflow-process", "--run-once", timeout=400)

    async def result():
        async with PrefectClient(env["PREFECT_API_URL"]) as c:
            fr = await c.read_flow_run(run_id)
            arts = await c.read_artifacts()
            return fr, {a.key for a in arts if a.key}

    fr, keys = asyncio.run(result())
    assert fr.state.is_completed(), fr.state
    assert {"ui-plan-fetch-config", "ui-plan-choose-instance",
            "ui-plan-render-serving-properties"} <= keys
    report = json.loads((report_dir / "report.json").read_text())
    assert report["status"] == "planned"
    assert report["plan"]["request"]["concurrency"] == 8
    # 26 GB of fp16 weights do not fit one 24 GB A10G: the four-GPU ml.g5.12xlarge shards each
    # copy over 2 GPUs (13 GB weights + 6.7 GB KV for 4 requests + overhead < 21.7 GB usable),
    # and the rendered properties must tell the container that degree.
    assert report["plan"]["chosen"]["tensor_parallel_degree"] == 2
    assert "option.tensor_parallel_degree=2\n" in report["serving_properties"]
