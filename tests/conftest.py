"""Suite-wide fixtures. Reuse these rather than starting servers of your own; the directory
conftests (e2e/, targets/, bench/, report/) build on them.

huggingface_hub
- Every test starts and ends with huggingface_hub's import-time settings (HF_ENDPOINT,
  HF_HUB_OFFLINE, HF_HOME and the cache paths, ...) equal to what the environment says
  (autouse; see tests/hf_settings.py). A test that changes those variables mid-test calls
  `hf_settings.sync(monkeypatch)`, or uses the fixtures below.
- `hf_env`: a private HF_HOME, no token, not offline, no telemetry.
- `point_hf_at(url)`: huggingface_hub and transformers talk to the Hub at `url` (a
  tests.hub_standin.HubStandIn's `.url`) for this test only.
- `hub_standin(repos)`: starts a HubStandIn, points huggingface_hub at it, stops it after.

Targets
- `memory_flow_target`: the deploy flow runs on tests/core/memory_target.FlowMemoryTarget
  (no model server, no AWS) whatever target its spec names; the test patches the instance to
  inject faults. For control flow (retries, faults, smoke/invoke errors, reports); keep the
  real local target for what only it shows (its server, signals, processes).

AWS
- `moto_url`: the endpoint URL of this process's one moto server (tests/aws_fakes.py), reset
  (POST /moto-api/reset) before and after the test. `aws_fakes.moto_server()` is the same as a
  context manager, for code outside fixtures. No test starts a moto server of its own.

Running
- `make test` runs pytest-xdist, `-n 3 --dist loadgroup` (3 workers on 2 cores: see the
  Makefile). Each worker is a process with its own session fixtures (moto server, Prefect
  harness, tmp_path_factory), so tests spread freely. Tests that must share one thing a
  worker cannot have twice (a fixed path, an expensive module fixture) carry
  `@pytest.mark.xdist_group("<name>")`: one worker runs them.
  Today, each for a module-scoped fixture that one worker should build, not each:
  "faults-production" (tests/e2e/test_faults.py: a real production deploy), "serving-server"
  (tests/serving/test_server.py: a real server), "latency-cv" (tests/sizing/test_latency_cv.py:
  the cross-validation, about 8 s). A new one goes with its reason. (On pytest 9.2 the
  groups hold only through tests/xdist_groups.py, imported here.)
- The demo model and the sample reports are one per session, shared by the workers:
  tests/session_files.py.
- Random order, on demand: `pytest -p random_order --random-order-seed=N` (pytest-random-order;
  off unless asked for).
"""

from __future__ import annotations

import pytest

from tests import hf_settings
from tests.aws_fakes import moto_server, stop_shared_moto
from tests.xdist_groups import pytest_collection_modifyitems  # noqa: F401 (a hook)


@pytest.fixture(autouse=True)
def _hf_settings_follow_the_environment():
    # No monkeypatch here: this fixture is set up before the test's own monkeypatch and torn
    # down after it, so at teardown the environment is already the one before the test.
    hf_settings.sync()
    yield
    hf_settings.sync()


@pytest.fixture
def hf_env(monkeypatch, tmp_path):
    """A private HF_HOME (so no cache and no stored token of the developer's), no token in the
    environment, not offline, no telemetry; huggingface_hub's settings follow."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for k in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN",
              "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    hf_settings.sync(monkeypatch)


@pytest.fixture
def point_hf_at(monkeypatch):
    """point_hf_at(url): huggingface_hub talks to the Hub at url until this test ends."""
    return lambda url: hf_settings.point_at(monkeypatch, url)


@pytest.fixture
def hub_standin(hf_env, point_hf_at):
    """hub_standin(repos) -> a started HubStandIn that huggingface_hub talks to; stopped when
    the test ends."""
    from tests.hub_standin import HubStandIn

    started: list[HubStandIn] = []

    def start(repos):
        hub = HubStandIn(repos).__enter__()
        started.append(hub)
        point_hf_at(hub.url)
        return hub

    yield start
    for hub in reversed(started):
        hub.__exit__(None, None, None)


@pytest.fixture(scope="session", autouse=True)
def _stop_the_shared_moto_server():
    yield
    stop_shared_moto()  # started on first use by aws_fakes.shared_moto_url


@pytest.fixture
def moto_url():
    """The session's moto server (one per process), empty at the start of the test."""
    with moto_server() as url:
        yield url


@pytest.fixture
def memory_flow_target(monkeypatch):
    """Every target the pipeline builds during this test is this FlowMemoryTarget."""
    from lmiflow import pipeline
    from tests.core.memory_target import FlowMemoryTarget

    target = FlowMemoryTarget()

    def built(*args, **kwargs):
        return target

    built.cache_clear = lambda: None  # what the fixtures call on the real lru_cache
    monkeypatch.setattr(pipeline, "_target", built)
    return target
