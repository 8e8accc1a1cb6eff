"""A secret put anywhere a config can hold one reaches the staged serving.properties (mode
0600 in a 0700 directory) and nothing else: not the Prefect database (flow-run parameters,
task runs, logs, artifacts, events), not the report, not the logs, not any world-readable
file. Each of the three typed homes is used at once: a literal, an environment variable and a
Prefect Secret block."""

from __future__ import annotations

import logging
import secrets
import stat
from pathlib import Path

import pytest

from tests.e2e.flows import make_spec, run

pytestmark = pytest.mark.slow


def _db_files() -> list[Path]:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    db = Path(url.split(":///", 1)[1])
    return [p for p in db.parent.glob(db.name + "*") if p.is_file()]


def _holding(roots: list[Path], needles: list[bytes]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for root in roots:
        for p in [root] if root.is_file() else root.rglob("*"):
            if not p.is_file():
                continue
            data = p.read_bytes()
            hits = [i for i, n in enumerate(needles) if n in data]
            if hits:
                found[str(p)] = hits
    return found


def test_a_secret_is_found_only_in_the_staged_file(prefect_harness, demo_model, state_dir,
                                                   tmp_path, monkeypatch, caplog, capfd):
    from prefect.blocks.system import Secret

    literal, from_env, from_block = (f"s3cr3t-{k}-{secrets.token_hex(8)}"
                                     for k in ("lit", "env", "blk"))
    monkeypatch.setenv("LMIFLOW_TEST_CREDS", from_env)
    Secret(value=from_block).save("lmiflow-e2e-secret", overwrite=True)
    caplog.set_level(logging.DEBUG)
    spec = make_spec(demo_model, name="e2e-secrets", **{"serving.secret_options": {
        "option.hf_token": literal,
        "option.my_creds": {"env": "LMIFLOW_TEST_CREDS"},
        "option.block_token": {"secret_block": "lmiflow-e2e-secret"},
    }})
    report_dir = tmp_path / "report"
    state, report = run(spec, report_dir)
    assert state.is_completed(), report["error"]
    assert report["status"] == "promoted"
    needles = [v.encode() for v in (literal, from_env, from_block)]

    # the container got every value, in a file only its owner can read
    staged = _holding([state_dir / "staged"], needles)
    assert len(staged) == 1 and sorted(next(iter(staged.values()))) == [0, 1, 2]
    staged_file = Path(next(iter(staged)))
    assert stat.S_IMODE(staged_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(staged_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "staged").stat().st_mode) == 0o700
    assert "option.hf_token=***" in report["serving_properties"]

    # ...and nowhere else: report, state (registry, server logs), the Prefect database
    # (parameters, logs, artifacts, events), the Prefect home, this test's logs and output
    others = [p for p in [report_dir, state_dir, *_db_files()] if p.exists()]
    # (the search is not vacuous: the database holds this run's parameters and artifacts)
    in_db = _holding(_db_files(), [b"deploy-e2e-secrets", b"LMIFLOW_TEST_CREDS"]).values()
    assert {i for hits in in_db for i in hits} == {0, 1}
    leaks = {k: v for k, v in _holding(others, needles).items() if Path(k) != staged_file}
    assert leaks == {}
    import os

    world_readable = [p for p in tmp_path.rglob("*") if p.is_file()
                      and os.stat(p).st_mode & stat.S_IROTH]
    assert _holding(world_readable, needles) == {}
    out, err = capfd.readouterr()
    for value in (literal, from_env, from_block):
        assert value not in caplog.text and value not in out + err
    # the block's value sits in the Prefect database only encrypted (the user's choice of home)


def test_a_plain_secret_in_serving_options_is_refused(demo_model, tmp_path, capsys):
    import yaml

    from lmiflow.cli import main

    value = "creds-" + secrets.token_hex(8)
    cfg = make_spec(demo_model).model_dump(mode="json")
    cfg["serving"]["options"] = {"option.hf_token": value}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["deploy", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmiflow: error: serving.options.option.hf_token: looks like a secret")
    assert value not in err
