"""SageMaker deploys end to end on moto (server mode) with a Hub stand-in: a gated model staged
into S3 from the runner, an s3:// model loaded from its own prefix, and the opt-in token to
the container. The real flow runs under Prefect; only the two runtime calls are answered
here (moto has no response streams). Each run's requests, as sent, are compared with the list
the plan showed before anything was created, and the planted token is searched for
everywhere: stdout, report files, artifacts, S3 objects and the models moto holds."""

from __future__ import annotations

import json
import re

import pytest
from safetensors.numpy import save

from lmiflow.cli import main
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.aws_requests import AwsRequest, validate
from tests.aws_fakes import s3_client, session
from tests.e2e.flows import run
from tests.e2e.test_deploy_flow import artifact_texts
from tests.hub_standin import Repo

pytestmark = pytest.mark.slow

TOKEN = "hf_" + "E2eGatedToken" * 3
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
BUCKET = "lmiflow-bucket"
CONFIG = json.dumps({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
    "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 2048,
    "torch_dtype": "float16"}).encode()


def weights_file() -> bytes:
    """Every tensor CONFIG describes (zeros): planning compares the config with them."""
    import numpy as np

    shapes = {"model.embed_tokens.weight": (1000, 256), "lm_head.weight": (1000, 256),
              "model.norm.weight": (256,)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (256, 256),
                   p + "self_attn.k_proj.weight": (128, 256),
                   p + "self_attn.v_proj.weight": (128, 256),
                   p + "self_attn.o_proj.weight": (256, 256),
                   p + "mlp.gate_proj.weight": (512, 256), p + "mlp.up_proj.weight": (512, 256),
                   p + "mlp.down_proj.weight": (256, 512),
                   p + "input_layernorm.weight": (256,),
                   p + "post_attention_layernorm.weight": (256,)}
    return save({name: np.zeros(shape, np.float16) for name, shape in shapes.items()})


PARAMETERS = 2 * 1000 * 256 + 256 + 2 * (2 * 256 * 256 + 2 * 128 * 256 + 3 * 512 * 256 + 2 * 256)
FILES = {"config.json": CONFIG, "model.safetensors": weights_file(),
         "tokenizer.json": b'{"version": "1.0"}', "README.md": b"# gated"}


def spec(model_id: str, **model) -> DeploymentSpec:
    return DeploymentSpec.model_validate({
        "name": "weights-prod",
        "model": {"id": model_id, "dtype": "fp16", **model},
        "workload": {"max_input_tokens": 64, "max_output_tokens": 16, "concurrency": 1},
        "instance": {"allow": ["ml.g4dn.*"]},  # moto's allow-list predates g5
        "target": {"kind": "sagemaker", "region": "us-east-1", "role_arn": ROLE,
                   "s3_uri": f"s3://{BUCKET}/lf/"},
        "smoke_test": {"prompt": "Hi", "max_new_tokens": 2},
        "benchmark": {"concurrency": [1], "requests": 2, "warmup_requests": 0,
                      "input_tokens": 8, "max_new_tokens": 2},
        "promotion": {"endpoint_timeout_s": 30},
    })


@pytest.fixture
def world(monkeypatch, tmp_path, hub_standin, moto_url):
    """Hub stand-in + moto; AWS and Hub settings pointing at them; runtime calls answered."""
    from lmiflow import pipeline
    from lmiflow.targets.sagemaker import SageMakerTarget

    # huggingface_hub (the benchmark's tokenizer download) talks to this test's stand-in
    hub = hub_standin({"org/gated": Repo(files=dict(FILES), gated=True, tokens={TOKEN})})
    url = moto_url
    for k, v in {"AWS_ENDPOINT_URL": url,
                 "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_CONFIG_FILE": str(tmp_path / "none"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                 "LMIFLOW_RETRY_BASE_S": "0.01"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    s3_client(url).create_bucket(Bucket=BUCKET)
    monkeypatch.setattr(SageMakerTarget, "invoke", _invoke)
    monkeypatch.setattr(SageMakerTarget, "invoke_stream", _invoke_stream)
    # moto has no Service Quotas: the account lists no endpoint quota (None per type).
    monkeypatch.setattr(SageMakerTarget, "endpoint_quotas",
                        lambda self, types: dict.fromkeys(types))
    pipeline._target.cache_clear()
    yield hub, url
    pipeline._target.cache_clear()


def _invoke(self, name, payload, timeout_s=None):
    return json.dumps({"generated_text": " hello", "details": {
        "finish_reason": "length", "generated_tokens": 2}}).encode()


def _invoke_stream(self, name, payload, timeout_s=None):
    yield b'{"token": {"id": 1, "text": " hel", "log_prob": -0.1}}'
    yield json.dumps({"token": {"id": 2, "text": "lo", "log_prob": -0.1},
                      "generated_text": " hello",
                      "details": {"finish_reason": "length", "generated_tokens": 2}}).encode()


def sent_requests(s) -> list[AwsRequest]:
    """Record every request the run's target sends (its clients are made on first use)."""
    from lmiflow import pipeline

    seen: list[AwsRequest] = []
    pipeline.target_for(s).on_request = seen.append
    return seen


def created(sent: list[AwsRequest]) -> dict:
    """The CreateModel request as sent."""
    return next(r.params for r in sent if r.operation == "CreateModel")


def _matches(planned: dict, sent: AwsRequest) -> bool:
    """Same operation and names; a planned xxxxxxxx hash stands for any hash."""
    if (planned["service"], planned["operation"]) != (sent.service, sent.operation):
        return False
    for key in ("EndpointName", "EndpointConfigName", "ModelName", "Bucket", "Key", "Prefix",
                "NameContains"):
        want = planned["params"].get(key)
        if want is not None and not re.fullmatch(
                re.escape(str(want)).replace("xxxxxxxx", "[0-9a-f]{8}"), str(sent.params.get(key))):
            return False
    return True


def assert_sent_as_planned(report: dict, sent: list[AwsRequest]) -> None:
    planned = report["requests"]
    for r in planned:  # the report's masked form is itself valid for the service model
        validate(AwsRequest(**r))
    strays = [(r.operation, r.params.get("Key") or r.params.get("EndpointName"))
              for r in sent if not any(_matches(p, r) for p in planned)]
    assert strays == [], f"sent but never shown: {strays}"
    always = [p for p in planned if not p.get("when")
              and p["service"] != "sagemaker-runtime"]  # runtime answered in-process here
    missing = [(p["operation"], p["params"]) for p in always
               if not any(_matches(p, r) for r in sent)]
    assert missing == [], "shown as always sent, but not sent"


def everything_written(out, tmp_path, url) -> str:
    """stdout/err, report files, artifacts, every S3 object and metadata, every model."""
    parts = [out.out, out.err, artifact_texts("weights-prod")]
    parts += [p.read_text() for p in tmp_path.rglob("report.*")]
    s3 = s3_client(url)
    for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        got = s3.get_object(Bucket=BUCKET, Key=o["Key"])
        parts.append(got["Body"].read().decode("latin-1") + json.dumps(got["Metadata"]))
    sm = session().client("sagemaker", endpoint_url=url)
    for m in sm.list_models()["Models"]:
        parts.append(json.dumps(sm.describe_model(ModelName=m["ModelName"]), default=str))
    return "\n".join(parts)


def write_config(tmp_path, s: DeploymentSpec) -> str:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(s.model_dump(mode="json", exclude_defaults=True)))
    return str(path)


@pytest.mark.parametrize("dry", [True, False])
def test_gated_model_without_a_token_stops_before_anything_is_created(world, tmp_path, capsys,
                                                                      dry):
    _, url = world
    config = write_config(tmp_path, spec("org/gated"))
    assert main(["deploy", config, *(["--dry-run"] if dry else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lmiflow: error: model.id: org/gated")
    assert "gated" in err and "HF_TOKEN" in err
    sm = session().client("sagemaker", endpoint_url=url)
    assert sm.list_models()["Models"] == []
    assert s3_client(url).list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_dry_run_of_a_gated_model_plans_the_staging_and_every_request(world, tmp_path, capsys,
                                                                      monkeypatch):
    hub, url = world
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    config = write_config(tmp_path, spec("org/gated"))
    assert main(["deploy", config, "--dry-run"]) == 0
    out = capsys.readouterr().out
    size = sum(len(FILES[n]) for n in ("config.json", "model.safetensors", "tokenizer.json"))
    prefix = f"s3://{BUCKET}/lf/weights/org--gated/{hub.repos['org/gated'].sha}/"
    assert f"3 files, {size / 1e9:.2f} GB" in out and prefix in out.replace("\n  ", "")
    assert "# AWS requests:" in out and "s3 PutObject" in out and "CreateModel" in out
    assert TOKEN not in out
    assert main(["deploy", config, "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "planned" and report["weights"]["delivery"] == "staged"
    for r in report["requests"]:
        validate(AwsRequest(**r))
    ops = [r["operation"] for r in report["requests"]]
    assert ops.index("PutObject") < ops.index("CreateModel")  # staged before the model
    assert TOKEN not in json.dumps(report)
    assert main(["iam", config, "--json"]) == 0
    policies = json.loads(capsys.readouterr().out)
    assert policies["runner"] == report["iam_policy"]
    sm = session().client("sagemaker", endpoint_url=url)
    assert sm.list_models()["Models"] == []


def test_gated_model_is_staged_and_served_from_s3(world, prefect_harness, tmp_path, capsys,
                                                  monkeypatch):
    hub, url = world
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    s = spec("org/gated")
    sent = sent_requests(s)
    _, report = run(s, tmp_path)
    assert report["status"] == "promoted", report["error"]
    names = {x["name"]: x for x in report["steps"]}
    assert names["stage_weights"]["status"] == "completed"
    w = report["weights"]
    prefix = f"s3://{BUCKET}/lf/weights/org--gated/{hub.repos['org/gated'].sha}/"
    assert (w["delivery"], w["prefix"], w["network_isolation"]) == ("staged", prefix, True)
    assert {f["name"] for f in report["staging"]["files"]} == {
        "config.json", "model.safetensors", "tokenizer.json"}  # no model card
    s3 = s3_client(url)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        body = s3.get_object(Bucket=BUCKET, Key=prefix.split(f"{BUCKET}/")[1] + name)["Body"]
        assert body.read() == FILES[name]
    # production serves the staged prefix, without network and without a token
    sm = session().client("sagemaker", endpoint_url=url)
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(
        EndpointName="weights-prod")["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"] == prefix
    assert created(sent)["EnableNetworkIsolation"] is True  # moto does not keep this one
    env = model["PrimaryContainer"]["Environment"]
    assert "HF_TOKEN" not in env and "HF_MODEL_ID" not in env  # weights in /opt/ml/model
    assert env["OPTION_DTYPE"] == "fp16"
    assert_sent_as_planned(report, sent)
    assert report["iam_policy"]["Statement"] and report["execution_role_policy"]["Statement"]
    assert "## Weights" in (tmp_path / "report.md").read_text()
    assert TOKEN not in everything_written(capsys.readouterr(), tmp_path, url)


def test_a_rerun_skips_staged_files_and_plans_with_the_first_runs_calibration(
        world, prefect_harness, tmp_path, monkeypatch, capsys):
    _, url = world
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    s = spec("org/gated")
    _, first = run(s, tmp_path / "first")
    _, report = run(s, tmp_path / "second")
    assert report["status"] == "promoted", report["error"]
    assert {f["status"] for f in report["staging"]["files"]} == {"skipped"}
    # Each benchmark's level was appended to the store in the S3 prefix, predicted vs
    # measured on the T4 the plan chose; the second run planned with the first one's fit.
    where = f"s3://{BUCKET}/lf/calibration.json"
    store = json.loads(s3_client(url).get_object(Bucket=BUCKET, Key="lf/calibration.json")[
        "Body"].read())
    assert [(r["run"], r["accelerator"], r["engine"], r["concurrency"])
            for r in store["records"]] == [(first["run_id"], "NVIDIA T4", "vllm", 1),
                                           (report["run_id"], "NVIDIA T4", "vllm", 1)]
    assert [(f["accelerator"], f["records"]) for f in store["fits"]] == [("NVIDIA T4", 2)]
    c1, c2 = first["calibration"], report["calibration"]
    assert (c1["recorded"], c1["store"], c1["fit_records"]) == (1, where, 0)
    assert (c2["recorded"], c2["store"], c2["fit_records"]) == (1, where, 1)
    assert c2["levels"][0]["calibrated"] is True and c1["levels"][0]["calibrated"] is False
    assert store["records"][1]["predicted_calibrated"] is True
    assert c2["refit"]["records"] == 2
    md = (tmp_path / "second" / "report.md").read_text()
    section = md.split("## Predicted vs measured")[1].split("\n## ")[0]
    assert "NVIDIA T4, TP 1, vllm" in section and "calibrated from 1 benchmark record" in section
    assert f"1 record(s) appended to {where}. Refit on 2 record(s)" in section
    # `lmiflow calibrate --config` shows (and refits) that same store in S3
    capsys.readouterr()
    assert main(["calibrate", "--config", write_config(tmp_path, s), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["store"], shown["records"]) == (where, 2)
    assert [(f["accelerator"], f["records"]) for f in shown["fits"]] == [("NVIDIA T4", 2)]


def test_s3_model_is_planned_from_its_prefix_and_loaded_from_it(world, prefect_harness,
                                                               tmp_path, capsys):
    _, url = world
    s3 = s3_client(url)
    for name, data in FILES.items():
        s3.put_object(Bucket=BUCKET, Key=f"models/tiny/{name}", Body=data)
    s = spec(f"s3://{BUCKET}/models/tiny/")
    sent = sent_requests(s)
    _, report = run(s, tmp_path)
    assert report["status"] == "promoted", report["error"]
    # sizing from config.json and the safetensors headers: every tensor counted
    assert report["model"]["parameters"] == PARAMETERS
    assert report["model"]["parameter_source"] == "safetensors"
    assert report["weights"]["delivery"] == "s3" and report["staging"] is None
    sm = session().client("sagemaker", endpoint_url=url)
    model = sm.describe_model(ModelName=sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName="weights-prod")[
            "EndpointConfigName"])["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"] == \
        f"s3://{BUCKET}/models/tiny/"
    assert created(sent)["EnableNetworkIsolation"] is True
    assert_sent_as_planned(report, sent)


def test_token_to_the_container_is_opt_in_masked_and_warned(world, prefect_harness, tmp_path,
                                                            capsys, monkeypatch):
    _, url = world
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    s = spec("org/gated", token_to_container=True)
    _, report = run(s, tmp_path)
    assert report["status"] == "promoted", report["error"]
    assert report["weights"]["delivery"] == "hub" and report["weights"]["token_to_container"]
    assert any("sagemaker:DescribeModel" in w for w in report["weights"]["warnings"])
    create = next(r for r in report["requests"] if r["operation"] == "CreateModel")
    assert create["params"]["PrimaryContainer"]["Environment"]["HF_TOKEN"] == "***"
    assert "option.model_id=org/gated\n" in report["serving_properties"]  # the Hub download
    assert "EnableNetworkIsolation" not in create["params"]
    # what the user opted into: the container has the token (moto shows it, as AWS would)
    sm = session().client("sagemaker", endpoint_url=url)
    models = [sm.describe_model(ModelName=m["ModelName"]) for m in sm.list_models()["Models"]]
    assert [m["PrimaryContainer"]["Environment"]["HF_TOKEN"] for m in models] == [TOKEN]
    # ... and nothing lmiflow writes does
    out = capsys.readouterr()
    texts = [out.out, out.err, artifact_texts("weights-prod")]
    texts += [p.read_text() for p in tmp_path.rglob("report.*")]
    assert not any(TOKEN in t for t in texts)


def test_a_local_directory_is_planned_to_be_staged(world, tmp_path, capsys):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    for name, data in FILES.items():
        (model_dir / name).write_bytes(data)
    config = write_config(tmp_path, spec(str(model_dir)))
    assert main(["deploy", config, "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    w = report["weights"]
    assert w["delivery"] == "staged" and w["network_isolation"] is True
    assert w["prefix"].startswith(f"s3://{BUCKET}/lf/weights/local/my-model-")
    assert {f["name"] for f in w["source"]["files"]} == {"config.json", "model.safetensors",
                                                         "tokenizer.json"}
    create = next(r for r in report["requests"] if r["operation"] == "CreateModel")
    assert create["params"]["PrimaryContainer"]["ModelDataSource"]["S3DataSource"][
        "S3Uri"] == w["prefix"]
    assert "option.model_id" not in report["serving_properties"]  # weights in /opt/ml/model
