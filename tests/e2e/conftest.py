"""End-to-end fixtures: one Prefect test harness per session, the demo model built once, and a
private local-target state directory."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    # Importing prefect.main sets up Prefect's log handlers on the stderr of that moment: do
    # it here, not inside a test whose captured stderr (capfd) is closed when it ends.
    import prefect.main  # noqa: F401
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    from lmiflow.serving.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("demo") / "demo-model")


@pytest.fixture()
def state_dir(tmp_path, monkeypatch):
    d = tmp_path / "state"
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(d))
    monkeypatch.setenv("LMIFLOW_RETRY_BASE_S", "0.01")
    from lmiflow import pipeline

    pipeline._target.cache_clear()
    yield d
    from lmiflow.targets.local import LocalTarget

    t = LocalTarget(d)
    for ep in t.list_endpoints():  # never leave a server running
        t.delete_endpoint(ep.name)
    pipeline._target.cache_clear()
