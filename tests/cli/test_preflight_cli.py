"""`lmiflow deploy` (not a dry run) asks the platform before it starts the flow: a rollback
alarm that does not exist, or a peak fleet over the account's quota, is exit 2 naming the
field, with nothing created and no flow started."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmiflow.cli import main
from lmiflow.targets.sagemaker import SageMakerTarget

ROOT = Path(__file__).resolve().parents[2]
CANARY = ROOT / "configs" / "llama-3.1-8b-g5-g6.yaml"  # alarms, CANARY on 2 x ml.g6.12xlarge


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch, tmp_path):
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: import it here (online) and patch
    # its constant for this test only, so later tests that serve a Hub stand-in stay online.
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # anything unstubbed fails
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    started = []
    import lmiflow.commands.deploy as deploy

    monkeypatch.setattr(deploy, "_run_flow", lambda *a: started.append(a) or 0)
    monkeypatch.setattr(SageMakerTarget, "production_fleet", lambda self, name: {})
    # Credentials, region and permissions pass here (tests/targets/test_aws_preflight.py has
    # their own checks): these tests are about alarms and quotas.
    monkeypatch.setattr(SageMakerTarget, "preflight", lambda self, needs=(): [])
    yield started
    assert started == []  # the flow never started


def _exit_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _on_the_account(monkeypatch, name: str, answer) -> None:
    """What the account answers the deploy's target; the dry run's recording twin (a
    SageMakerTarget too) keeps its in-memory account's answers."""
    real = getattr(SageMakerTarget, name)

    def patched(self, *args):
        return real(self, *args) if hasattr(self, "recording_of") else answer(self, *args)

    monkeypatch.setattr(SageMakerTarget, name, patched)


def test_missing_alarm(monkeypatch, capsys):
    _on_the_account(monkeypatch, "missing_alarms",
                    lambda self, names: [n for n in names if n.endswith("latency")])
    assert main(["deploy", str(CANARY)]) == 2
    line = _exit_line(capsys)
    assert line.startswith("lmiflow: error: promotion.alarms: no CloudWatch alarm named "
                           "llama-3-1-8b-prod-p99-latency")


def test_fleet_over_quota(monkeypatch, capsys):
    monkeypatch.setattr(SageMakerTarget, "missing_alarms", lambda self, names: [])
    _on_the_account(monkeypatch, "endpoint_quotas",
                    lambda self, types: dict.fromkeys(types, 1.0))
    assert main(["deploy", str(CANARY)]) == 2
    line = _exit_line(capsys)
    assert line.startswith("lmiflow: error: instance.count: ")
    assert ("2 x ml.g6.12xlarge at the peak but the quota 'ml.g6.12xlarge for endpoint "
            "usage' is 1") in line
