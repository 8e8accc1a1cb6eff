"""Model sources and how the container gets the weights: the Hub (through a stand-in on
127.0.0.1, so huggingface_hub's real code runs), s3:// prefixes (moto), local directories, and
the decision table that picks hub / staged / s3 delivery and network isolation."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from pydantic import SecretStr
from safetensors.numpy import save

from lmiflow.errors import UserInputError
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.aws_requests import validate
from lmiflow.targets.weights import (
    ModelSource,
    WeightFile,
    hub_source,
    local_safetensors,
    local_source,
    plan_weights,
    s3_read_requests,
    s3_source,
    select_files,
    staging_prefix,
)
from tests.hub_standin import Repo

GOOD = "hf_" + "g00dT0ken" * 4
OTHER = "hf_" + "0therT0ken" * 4
CONFIG = json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2,
                     "intermediate_size": 128, "vocab_size": 100}).encode()


def tiny_safetensors() -> tuple[bytes, int]:
    """A safetensors file and its parameter count, counted here from the shapes."""
    tensors = {"embed.weight": np.zeros((100, 64), np.float16),
               "layer.0.q.weight": np.zeros((64, 64), np.float16),
               "norm.weight": np.zeros((64,), np.float16)}
    return save(tensors), 100 * 64 + 64 * 64 + 64


WEIGHTS, PARAMS = tiny_safetensors()
FILES = {"config.json": CONFIG, "model.safetensors": WEIGHTS, "tokenizer.json": b"{}",
         "README.md": b"# card", ".gitattributes": b"*.safetensors filter=lfs",
         "original/consolidated.pth": b"x" * 10, "modeling_custom.py": b"print()"}


def repos():
    return {"org/public": Repo(files=dict(FILES)),
            "org/gated": Repo(files=dict(FILES), gated=True, tokens={GOOD}),
            "org/private": Repo(files=dict(FILES), private=True, tokens={GOOD}),
            "org/bin-only": Repo(files={"config.json": CONFIG, "pytorch_model.bin": b"w" * 64,
                                        "tokenizer.model": b"sp"})}


@pytest.fixture
def hub(hub_standin):
    return hub_standin(repos())


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


# ---- the Hub ------------------------------------------------------------------------------


def test_public_repo_lists_what_the_container_needs_with_digests(hub):
    src = hub_source("org/public", None, None)
    assert (src.kind, src.access, src.commit) == ("hub", "public", repos()["org/public"].sha)
    # no card, no git metadata, no sub-folder (original/), no repository code
    assert [f.name for f in src.files] == ["config.json", "model.safetensors", "tokenizer.json"]
    by = {f.name: f for f in src.files}
    assert by["model.safetensors"].sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert by["model.safetensors"].size == len(WEIGHTS)
    assert by["config.json"].git_sha1 == git_blob(CONFIG) and by["config.json"].sha256 is None


def test_repository_code_only_when_trusted(hub):
    src = hub_source("org/public", None, None, trust_remote_code=True)
    assert "modeling_custom.py" in [f.name for f in src.files]


def test_pytorch_bin_weights_when_there_are_no_safetensors(hub):
    names = [f.name for f in hub_source("org/bin-only", None, None).files]
    assert names == ["config.json", "pytorch_model.bin", "tokenizer.model"]


def test_select_files_prefers_safetensors():
    names = ["model-00001-of-00002.safetensors", "pytorch_model-00001-of-00002.bin",
             "config.json", "original/params.json"]
    assert select_files(names, False) == ["config.json", "model-00001-of-00002.safetensors"]


def test_gated_repo_without_token_is_input_error_saying_what_to_do(hub):
    with pytest.raises(UserInputError) as err:
        hub_source("org/gated", None, None)
    assert err.value.field == "model.id"
    assert "gated" in err.value.reason and "accept its licence" in err.value.reason
    assert "HF_TOKEN" in err.value.reason


def test_gated_repo_with_a_token_that_has_no_access(hub):
    with pytest.raises(UserInputError) as err:
        hub_source("org/gated", None, SecretStr(OTHER))
    assert err.value.field == "model.id" and "no access" in err.value.reason
    assert OTHER not in str(err.value)


def test_gated_repo_with_access_and_the_token_only_went_to_the_hub(hub):
    src = hub_source("org/gated", None, SecretStr(GOOD))
    assert src.access == "gated" and len(src.files) == 3
    assert {server for server, _, auth in hub.auth_seen if auth} == {"hub"}


def test_private_repo(hub):
    with pytest.raises(UserInputError, match="not found on the Hub or is private"):
        hub_source("org/private", None, None)
    assert hub_source("org/private", None, SecretStr(GOOD)).access == "private"


def test_unknown_revision_names_model_revision(hub):
    with pytest.raises(UserInputError) as err:
        hub_source("org/public", "v9", None)
    assert err.value.field == "model.revision"


# ---- local and s3 ---------------------------------------------------------------------------


def test_local_directory(tmp_path):
    for name, data in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    src = local_source(tmp_path)
    assert src.kind == "local" and src.id == str(tmp_path.resolve())
    assert {f.name: f.size for f in src.files} == {
        "config.json": len(CONFIG), "model.safetensors": len(WEIGHTS), "tokenizer.json": 2}


@pytest.mark.parametrize("name", ["vocab.txt", "x"])
def test_a_link_out_of_the_model_directory_is_refused_naming_it(tmp_path, name):
    """vocab.txt -> ~/.aws/credentials would be staged with the credentials in it."""
    model, secret = tmp_path / "model", tmp_path / "home" / ".aws" / "credentials"
    model.mkdir()
    secret.parent.mkdir(parents=True)
    secret.write_text("[default]\naws_secret_access_key = planted\n")
    for fname in ("config.json", "model.safetensors"):
        (model / fname).write_bytes(FILES[fname])
    (model / name).symlink_to(secret)
    with pytest.raises(UserInputError) as err:
        local_source(model)
    assert err.value.field == "model.id"
    assert f"{model / name} is a symbolic link out of the model directory" in err.value.reason


def test_a_weights_file_linked_out_of_the_directory_is_refused_before_it_is_read(tmp_path):
    """Planning reads the safetensors headers before it lists the files to stage: the same
    rule (inside_model_dir) must stop a link out there, not open its target first."""
    model, outside = tmp_path / "model", tmp_path / "elsewhere" / "model.safetensors"
    model.mkdir()
    outside.parent.mkdir()
    outside.write_bytes(FILES["model.safetensors"])
    (model / "config.json").write_bytes(FILES["config.json"])
    (model / "model.safetensors").symlink_to(outside)
    with pytest.raises(UserInputError) as err:
        local_safetensors(model)
    assert err.value.field == "model.id"
    assert "is a symbolic link out of the model directory" in err.value.reason


def test_links_inside_the_directory_and_the_hub_cache_layout_are_files(tmp_path):
    """A link to a file of the directory is that file; the Hugging Face cache's snapshots/
    <commit>/ links to ../../blobs/ of its own repository (its normal layout)."""
    repo = tmp_path / "models--org--m"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for i, fname in enumerate(("config.json", "model.safetensors", "tokenizer.json")):
        (blobs / f"blob{i}").write_bytes(FILES[fname])
        (snap / fname).symlink_to(f"../../blobs/blob{i}")
    (snap / "vocab.txt").symlink_to("tokenizer.json")
    src = local_source(snap)
    assert {f.name for f in src.files} == {"config.json", "model.safetensors",
                                           "tokenizer.json", "vocab.txt"}


def test_s3_prefix_config_and_exact_counts_from_safetensors_headers(moto_s3):
    _, s3 = moto_s3
    for name, data in {"config.json": CONFIG, "model-00001.safetensors": WEIGHTS,
                       "model-00002.safetensors": WEIGHTS, "serving.properties": b"x=1"}.items():
        s3.put_object(Bucket="lmiflow-bucket", Key=f"models/tiny/{name}", Body=data)
    src, cfg, params = s3_source(s3, "s3://lmiflow-bucket/models/tiny/")
    assert cfg == json.loads(CONFIG)
    assert params == 2 * PARAMS
    assert {f.name for f in src.files} == {"config.json", "model-00001.safetensors",
                                           "model-00002.safetensors", "serving.properties"}
    assert "serving.properties" in src.note  # it would override lmiflow's settings
    reqs = s3_read_requests(src)
    for r in reqs:
        validate(r)
    assert [r.operation for r in reqs] == ["ListObjectsV2", "GetObject", "GetObject",
                                           "GetObject"]


def test_s3_prefix_without_config_json(moto_s3):
    _, s3 = moto_s3
    s3.put_object(Bucket="lmiflow-bucket", Key="models/x/weights.bin", Body=b"x")
    with pytest.raises(UserInputError, match=r"no config\.json"):
        s3_source(s3, "s3://lmiflow-bucket/models/x/")


def test_s3_object_that_is_not_safetensors(moto_s3):
    _, s3 = moto_s3
    s3.put_object(Bucket="lmiflow-bucket", Key="m/config.json", Body=CONFIG)
    s3.put_object(Bucket="lmiflow-bucket", Key="m/model.safetensors", Body=b"\xff" * 64)
    with pytest.raises(UserInputError, match="not a safetensors file"):
        s3_source(s3, "s3://lmiflow-bucket/m/")


# ---- the decision ---------------------------------------------------------------------------


def spec(model: dict | None = None, target: dict | None = None) -> DeploymentSpec:
    t = {"kind": "sagemaker", "region": "us-east-1",
         "role_arn": "arn:aws:iam::123456789012:role/r", "s3_uri": "s3://lmiflow-bucket/lf/"}
    return DeploymentSpec.model_validate({
        "name": "prod", "model": {"id": "org/m", **(model or {})},
        "workload": {"max_input_tokens": 8, "max_output_tokens": 8, "concurrency": 1},
        "target": {**t, **(target or {})}})


def hub_src(access="public", commit="c" * 40) -> ModelSource:
    return ModelSource(kind="hub", id="org/m", commit=commit, access=access,
                       files=[WeightFile(name="config.json", size=3, git_sha1="a" * 40)])


S3_SRC = ModelSource(kind="s3", id="s3://data/llama/")
LOCAL_SRC = ModelSource(kind="local", id="/models/tiny",
                        files=[WeightFile(name="config.json", size=3)])


@pytest.mark.parametrize("model, target, source, delivery, isolated", [
    ({}, {}, hub_src("public"), "hub", False),
    ({}, {}, hub_src("gated"), "staged", True),
    ({}, {}, hub_src("private"), "staged", True),
    ({}, {}, hub_src("unknown", commit=None), "staged", True),
    ({"weights": "stage"}, {}, hub_src("public"), "staged", True),
    ({"weights": "hub", "token_to_container": True}, {}, hub_src("gated"), "hub", False),
    ({"token_to_container": True}, {}, hub_src("gated"), "hub", False),
    ({}, {"network_isolation": False}, hub_src("gated"), "staged", False),
    ({}, {}, S3_SRC, "s3", True),
    ({}, {}, LOCAL_SRC, "staged", True),
    ({}, {"kind": "local"}, hub_src("gated"), "hub", False),
    ({}, {"kind": "local"}, LOCAL_SRC, "local", False),
])
def test_delivery_table(model, target, source, delivery, isolated):
    plan = plan_weights(spec(model, target), source)
    assert (plan.delivery, plan.network_isolation) == (delivery, isolated)
    assert (plan.prefix is not None) == (delivery in ("staged", "s3"))
    assert plan.token_to_container == bool(model.get("token_to_container"))
    if plan.token_to_container:
        assert any("sagemaker:DescribeModel" in w for w in plan.warnings)


@pytest.mark.parametrize("model, target, source, field", [
    ({"weights": "hub"}, {}, hub_src("gated"), "model.weights"),
    ({"weights": "stage", "token_to_container": True}, {}, hub_src("gated"),
     "model.token_to_container"),
    ({"weights": "stage"}, {}, S3_SRC, "model.weights"),
    ({"token_to_container": True}, {}, S3_SRC, "model.token_to_container"),
    ({"weights": "hub"}, {}, LOCAL_SRC, "model.weights"),
    ({}, {"network_isolation": True}, hub_src("public"), "target.network_isolation"),
    ({}, {"s3_uri": None, "packaging": "env"}, hub_src("gated"), "target.s3_uri"),
    ({}, {"kind": "local"}, S3_SRC, "model.id"),
])
def test_contradictions_name_the_field(model, target, source, field):
    with pytest.raises(UserInputError) as err:
        plan_weights(spec(model, target), source)
    assert err.value.field == field


def test_staged_prefix_is_per_commit_or_per_file_list():
    assert staging_prefix("s3://b/lf/", hub_src()) == f"s3://b/lf/weights/org--m/{'c' * 40}/"
    a = staging_prefix("s3://b/lf/", LOCAL_SRC)
    grown = LOCAL_SRC.model_copy(update={"files": [*LOCAL_SRC.files,
                                                   WeightFile(name="x.json", size=1)]})
    assert a.startswith("s3://b/lf/weights/local/tiny-") and a != staging_prefix(
        "s3://b/lf/", grown)


def test_s3_model_id_in_the_config_gets_a_trailing_slash_and_bad_ones_fail():
    assert spec({"id": "s3://data/llama"}).model.id == "s3://data/llama/"
    with pytest.raises(ValueError, match="s3://bucket/prefix/"):
        spec({"id": "s3://Bad_Bucket/x/"})


# ---- a local directory's tensor shapes (config.json checked against them) -------------------


def test_local_shapes_come_from_the_files_transformers_loads(tmp_path):
    from lmiflow.targets.weights import local_safetensors

    assert local_safetensors(tmp_path) is None  # no weights: nothing to compare
    (tmp_path / "model.safetensors").write_bytes(WEIGHTS)
    # a consolidated copy beside the weights (Mistral's repositories) is not counted twice
    (tmp_path / "consolidated.safetensors").write_bytes(WEIGHTS)
    assert local_safetensors(tmp_path) == {"embed.weight": [100, 64],
                                           "layer.0.q.weight": [64, 64], "norm.weight": [64]}
    second = save({"lm_head.weight": np.zeros((100, 64), np.float16)})
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(second)
    weight_map = {"embed.weight": "model.safetensors",
                  "lm_head.weight": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shapes = local_safetensors(tmp_path)
    assert set(shapes) == {"embed.weight", "layer.0.q.weight", "norm.weight", "lm_head.weight"}


@pytest.mark.parametrize(("index", "reason"), [
    ("[]", "is not a safetensors index (a JSON object with a weight_map)"),
    ('{"weight_map": {"x": "../outside.safetensors"}}', "names '../outside.safetensors', which "
                                                        "is not a file in the model directory"),
    ('{"weight_map": {"x": "missing.safetensors"}}', "names 'missing.safetensors'"),
])
def test_a_bad_index_is_input_error_naming_it(tmp_path, index, reason):
    from lmiflow.targets.weights import local_safetensors

    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(UserInputError) as err:
        local_safetensors(tmp_path)
    assert err.value.field == "model" and reason in err.value.reason


@pytest.mark.parametrize("data", [
    b"", b"\x01" * 7, (10**9).to_bytes(8, "little"), (4).to_bytes(8, "little") + b"[1] ",
    (4).to_bytes(8, "little") + b"\xff\xfe{}", (2).to_bytes(8, "little") + b"{}"[:1] + b"x",
])
def test_files_that_are_not_safetensors(tmp_path, data):
    from lmiflow.targets.weights import local_safetensors

    (tmp_path / "model.safetensors").write_bytes(data)
    with pytest.raises(UserInputError, match="is not a safetensors file"):
        local_safetensors(tmp_path)


@pytest.mark.parametrize("shape", ['"x"', "[1.5]", "[-1]", "[true]", "null"])
def test_a_tensor_without_a_valid_shape(tmp_path, shape):
    from lmiflow.targets.weights import local_safetensors

    header = json.dumps({"w": {"dtype": "F16", "shape": json.loads(shape),
                               "data_offsets": [0, 0]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(UserInputError) as err:
        local_safetensors(tmp_path)
    assert err.value.reason.endswith("model.safetensors: tensor 'w' has no valid shape")
