"""The model-access and permission commands as a user calls them: `plan --model s3://...`
against moto, `lmiflow iam`, and the config fields of model access and networking (bad input
is one line naming the field, exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from tests.aws_fakes import moto_server, s3_client

ROOT = Path(__file__).resolve().parents[2]
SAGEMAKER = ROOT / "configs" / "llama-3.1-8b-g5-g6.yaml"


def lmiflow(*args, env=None):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "AWS_ACCESS_KEY_ID": "testing",
         "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
         "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
         "AWS_ENDPOINT_URL": "http://127.0.0.1:9", **(env or {})}
    e.setdefault("LMIFLOW_STATE_DIR", "/nonexistent/lmiflow-test-state")
    return subprocess.run([sys.executable, "-m", "lmiflow", *args], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=180)


def one_line_error(r, field: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lmiflow: error: {field}"), r.stderr


def test_plan_an_s3_model_from_its_prefix():
    config = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 1000, "torch_dtype": "float16"}
    with moto_server() as url:
        s3 = s3_client(url)
        s3.create_bucket(Bucket="models-bucket")
        s3.put_object(Bucket="models-bucket", Key="tiny/config.json",
                      Body=json.dumps(config).encode())
        s3.put_object(Bucket="models-bucket", Key="tiny/model.safetensors",
                      Body=save({"w": np.zeros((1000, 300), np.float16)}))
        r = lmiflow("plan", "--model", "s3://models-bucket/tiny", "--max-input-tokens", "64",
                    "--max-output-tokens", "16", "--concurrency", "1", "--json",
                    env={"AWS_ENDPOINT_URL": url})
        missing = lmiflow("plan", "--model", "s3://models-bucket/none/", "--max-input-tokens",
                          "64", "--max-output-tokens", "16", "--concurrency", "1",
                          env={"AWS_ENDPOINT_URL": url})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"]["parameters"] == 1000 * 300  # the header's count
    one_line_error(missing, "model.id")


def test_iam_prints_both_policies_and_needs_a_sagemaker_config():
    r = lmiflow("iam", str(SAGEMAKER), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    actions = {a for st in doc["runner"]["Statement"] for a in st["Action"]}
    assert {"sagemaker:CreateModel", "sagemaker:UpdateEndpoint", "iam:PassRole",
            "s3:PutObject"} <= actions
    assert doc["execution_role_trust"]["Statement"][0]["Principal"] == {
        "Service": "sagemaker.amazonaws.com"}
    one_line_error(lmiflow("iam", "configs/local-demo.yaml"), "target.kind")


@pytest.mark.parametrize("edit, field", [
    ("  vpc: {subnets: [not-a-subnet], security_group_ids: [sg-01234567]}\n",
     "target.vpc.subnets"),
    ("  vpc: {subnets: [subnet-01234567], security_group_ids: []}\n",
     "target.vpc.security_group_ids"),
    ("  network_isolation: maybe\n", "target.network_isolation"),
])
def test_bad_network_settings_name_the_field(tmp_path, edit, field):
    text = SAGEMAKER.read_text().replace("target:\n", "target:\n" + edit, 1)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    one_line_error(lmiflow("deploy", str(path), "--dry-run"), field)


@pytest.mark.parametrize("edit, field", [
    ("  weights: sometimes\n", "model.weights"),
    ("  id: s3://Not_A_Bucket/x/\n", "model.id"),
])
def test_bad_model_access_settings_name_the_field(tmp_path, edit, field):
    text = SAGEMAKER.read_text()
    if "id:" in edit:
        text = "\n".join(line for line in text.splitlines() if not line.startswith("  id:"))
    text = text.replace("model:\n", "model:\n" + edit, 1)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    one_line_error(lmiflow("deploy", str(path), "--dry-run"), field)


def test_json_needs_a_dry_run():
    one_line_error(lmiflow("deploy", str(SAGEMAKER), "--json"), "--json")
