"""End-to-end fixtures (the suite-wide ones, memory_flow_target, hub_standin, moto_url, are in
tests/conftest.py):

- `prefect_harness` (session): one Prefect API for the whole session (per xdist worker), with
  its own PREFECT_HOME, on a copy of the session's migrated database (tests/session_files.py).
  In-process flows use it; a CLI subprocess shares it through
  PREFECT_API_URL (tests/e2e/flows.prefect_api_env()) instead of starting a temporary API
  server of its own (tests/e2e/test_interrupts.py checks that server's life cycle).
- `demo_model` (session): the tiny random-weight Llama, built once per session and shared by
  the xdist workers and the other directories' tests (tests/session_files.py); read-only.
- `state_dir`: a private local-target state directory; every server left in it is stopped.

Under xdist each worker has its own harness and state directories, so e2e tests spread over
the workers. A module-scoped fixture would be built by each worker that runs one of its tests:
test_faults' `production` (a real deploy, about 12 s) is used by two tests, which therefore
carry xdist_group("faults-production") and run on one worker."""

from __future__ import annotations

import os

import pytest

from tests.session_files import seed_prefect_db, session_prefect_db


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    # Importing prefect.main sets up Prefect's log handlers on the stderr of that moment: do
    # it here, not inside a test whose captured stderr (capfd) is closed when it ends.
    import prefect.main  # noqa: F401
    import prefect.testing.utilities as harness
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED,
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED,
        PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    # Prefect's harness puts its database in a new mkdtemp() folder, empty: its API server
    # would spend about 12 s of CPU migrating it. The folder it gets here already holds a
    # migrated copy; the check below fails if a Prefect release moves the file, rather than
    # letting every session quietly migrate again.
    template = session_prefect_db(tmp_path_factory)
    seeded = tmp_path_factory.mktemp("prefect-db")
    seed_prefect_db(template, seeded / "prefect-test.db")
    # The API server's event services (stored events, task runs rebuilt from them, automation
    # triggers) do about half its work per flow run, and no test reads what they produce; the
    # harness starts its server with the settings of this moment, so they are off in it only.
    # tests/e2e/test_prefect_server.py runs a server with Prefect's defaults.
    quiet_server = {PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED: False,
                    PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED: False,
                    PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED: False}
    with pytest.MonkeyPatch.context() as mp, temporary_settings(updates=quiet_server):
        mp.setattr(harness, "mkdtemp", lambda: str(seeded))
        # No flow-run heartbeats in this process: the heartbeat thread sleeps in 1 s steps and
        # each flow run waits for it to wake when it ends (0.5 s on average, about 40 runs per
        # session). Heartbeats tell a Prefect server that a run crashed; no test here asks
        # it. CLI subprocesses keep theirs (the setting cannot be unset through the
        # environment).
        with (prefect_test_harness(server_startup_timeout=180),
              temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})):
            url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
            assert url.endswith(f"{seeded}/prefect-test.db"), url
            mp.undo()
            yield


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    from tests.session_files import session_demo_model

    return session_demo_model(tmp_path_factory)


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
