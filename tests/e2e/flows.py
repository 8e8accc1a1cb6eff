"""Helpers shared by the end-to-end tests: a demo-model spec, one flow run, and the session's
Prefect API for a CLI subprocess."""

from __future__ import annotations

import json

from lmiflow.spec import DeploymentSpec
from tests.report.schema import validate_report


def make_spec(model_dir, **over) -> DeploymentSpec:
    data = {
        "name": "e2e-demo",
        "model": {"id": str(model_dir), "dtype": "fp32"},
        "workload": {"max_input_tokens": 128, "max_output_tokens": 16, "concurrency": 4},
        "target": {"kind": "local"},
        "smoke_test": {"prompt": "Hello", "max_new_tokens": 4},
        "benchmark": {"concurrency": [1, 2], "requests": 4, "warmup_requests": 1,
                      "input_tokens": 16, "max_new_tokens": 8},
        "gates": [{"metric": "error_rate", "stat": "value", "op": "<=", "threshold": 0.0},
                  {"metric": "ttft_ms", "stat": "p95", "op": "<=", "threshold": 30000}],
        "promotion": {"endpoint_timeout_s": 180},
    }
    for dotted, value in over.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return DeploymentSpec.model_validate(data)


def run(spec, report_dir):
    from lmiflow.flows.deploy import deploy_llm

    state = deploy_llm(spec, report_dir=str(report_dir), return_state=True)
    report = json.loads((report_dir / "report.json").read_text())
    validate_report(report)  # every run's report.json, against the shipped schema
    return state, report


def prefect_api_env() -> dict[str, str]:
    """What a CLI subprocess needs to use the session's Prefect API (with prefect_harness
    active) rather than start a temporary server of its own."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "prefect_harness is not active"
    return {"PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
