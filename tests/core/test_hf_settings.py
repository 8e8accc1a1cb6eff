"""huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and its cache paths once, at import; the
suite's guard (tests/conftest.py, tests/hf_settings.py) makes every test talk to its own Hub
stand-in whatever ran before it. Once a test that pointed HF_ENDPOINT at a stand-in it then
stopped made a later test's tokenizer download retry that dead address for four minutes."""

from __future__ import annotations

import os

import pytest

from tests import hf_settings

pytest_plugins = ["pytester"]

# Two tests that each start a stand-in and download through huggingface_hub (as
# transformers' AutoTokenizer does), and one that uses none: run in one session, in both
# orders, each must see only its own settings.
INNER = '''
import os
import time

from huggingface_hub import constants, hf_hub_download

from tests.hub_standin import Repo

FILES = {"config.json": b'{"model_type": "llama"}'}


def fetch(hub):
    t0 = time.monotonic()
    path = hf_hub_download("org/m", "config.json")
    assert open(path, "rb").read() == FILES["config.json"]
    assert [p for s, p, _ in hub.auth_seen if s == "hub"], "the download reached another Hub"
    assert time.monotonic() - t0 < 20


def test_first(hub_standin):
    fetch(hub_standin({"org/m": Repo(files=dict(FILES))}))


def test_second(hub_standin):
    fetch(hub_standin({"org/m": Repo(files=dict(FILES), sha="1" * 40)}))


def test_without_a_stand_in():
    assert constants.ENDPOINT == os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    assert constants.HF_HUB_OFFLINE is False
'''
CONFTEST = ("from tests.conftest import (_hf_settings_follow_the_environment, hf_env, "
            "hub_standin, point_hf_at)  # noqa: F401\n")


@pytest.mark.parametrize("order", [("test_first", "test_second", "test_without_a_stand_in"),
                                   ("test_without_a_stand_in", "test_second", "test_first")])
def test_each_test_talks_to_its_own_stand_in_in_any_order(pytester, monkeypatch, order):
    import huggingface_hub  # noqa: F401 - imported before the inner tests, as in the suite

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hf_settings.sync(monkeypatch)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=INNER)
    ids = [f"test_inner.py::{name}" for name in order]
    result = pytester.runpytest_inprocess(*ids, "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_settings_follow_the_environment_and_are_restored(monkeypatch, tmp_path):
    from huggingface_hub import constants
    from huggingface_hub.hf_api import api

    before = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(tmp_path / "home"))
        mp.delenv("HF_HUB_CACHE", raising=False)
        hf_settings.sync(mp)
        assert constants.ENDPOINT == api.endpoint == "http://127.0.0.1:9"
        assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith("http://127.0.0.1:9/")
        assert constants.HF_HUB_OFFLINE is True
        assert os.path.join(str(tmp_path / "home"), "hub") == constants.HF_HUB_CACHE
    assert before == (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE)
    assert api.endpoint == constants.ENDPOINT
