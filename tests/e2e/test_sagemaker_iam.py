"""The runner policy against an IAM judge lmiflow does not write: whole SageMaker deploys on
moto (server mode) with moto's IAM authorization switched on, as an IAM user whose only
permission is the runner policy `lmiflow iam CONFIG` prints. A first deploy, a blue/green
redeploy and a rejected run: moto must allow every request each one sends (S3, SageMaker,
STS, IAM). Then the runner may not delete production: teardown is not a deploy's to do; a
user holding only `lmiflow iam`'s delete policy runs `endpoints delete`, every request
allowed, and it removes the S3 files only that endpoint used.

What the test adds to moto, and why (REFERENCE.md, "moto 5.2.5"):
- moto authorizes SageMaker requests against the resource "*", so a policy scoped to ARNs
  would be refused everything; here each SageMaker request is authorized against the ARN of
  the resource it names (the table RESOURCE_OF, from the Service Authorization Reference's
  resource types: the one the operation is named after first).
- moto has no UpdateEndpoint: after moto authorized it, the endpoint is pointed at the new
  config here, as a finished blue/green update leaves it.
- moto authorizes an S3 DeleteObjects as s3:DeleteObject on the bucket; S3 does on each key
  it names, so here each key is authorized.
- moto's condition evaluator skips operators it does not know (StringLike, IfExists):
  tests/targets/test_policy_judges.py judges the conditions.
The runtime's two invocations are answered in-process (moto has no response streams), so
they are not authorized here; the policy judges above cover them."""

from __future__ import annotations

import json

import pytest

from lmiflow.cli import main
from lmiflow.spec import DeploymentSpec
from tests.aws_fakes import moto_server, s3_client, session
from tests.e2e.flows import run
from tests.e2e.test_sagemaker_weights import BUCKET, FILES, spec, write_config

pytestmark = pytest.mark.slow

RESOURCE_OF = {"InferenceComponentName": "inference-component", "EndpointName": "endpoint",
               "EndpointConfigName": "endpoint-config", "ModelName": "model"}
MODEL = f"s3://{BUCKET}/models/tiny/"


def _sagemaker_resource(self) -> str:
    """The ARN of the resource a SageMaker request acts on ("*" for the List calls, which
    take no resource type)."""
    action = self._get_action()
    if action.startswith("List") and action != "ListTags":
        return "*"
    if self._get_param("ResourceArn"):
        return self._get_param("ResourceArn")
    keys = sorted(RESOURCE_OF, key=lambda k: k.removesuffix("Name") not in action)
    for key in keys:
        name = self._get_param(key)
        if name:
            return (f"arn:aws:sagemaker:{self.region}:{self.current_account}:"
                    f"{RESOURCE_OF[key]}/{name.lower()}")
    return "*"


def _authorize_each_key(original):
    """S3 authorizes DeleteObjects as s3:DeleteObject on each key it names (S3 API
    Reference, DeleteObjects, "Permissions"); moto asks for it on the bucket. Here each key."""
    def authorize(self, bucket_name=None, key_name=None):
        if key_name is None and self.data.get("Action") == "DeleteObject" and \
                self.is_delete_keys():
            import xmltodict

            objects = xmltodict.parse(self.body)["Delete"].get("Object", [])
            for obj in objects if isinstance(objects, list) else [objects]:
                original(self, bucket_name=bucket_name, key_name=obj["Key"])
            return
        original(self, bucket_name=bucket_name, key_name=key_name)

    return authorize


def _update_endpoint(self):
    """UpdateEndpoint as a finished blue/green update leaves the endpoint."""
    from moto.core.responses import ActionResult

    endpoint = self.sagemaker_backend.endpoints[self._get_param("EndpointName")]
    endpoint.endpoint_config_name = self._get_param("EndpointConfigName")
    return ActionResult({"EndpointArn": endpoint.arn})


@pytest.fixture
def iam_world(monkeypatch, tmp_path):
    """moto with the model in S3 and an IAM user holding the runner policy of `config`;
    returns (url, config path, denials moto answered, switch IAM on as that user)."""
    from moto.iam.access_control import IAMRequestBase
    from moto.s3.responses import S3Response
    from moto.sagemaker.responses import SageMakerResponse

    from lmiflow import pipeline
    from lmiflow.targets.sagemaker import SageMakerTarget
    from tests.e2e.test_sagemaker_weights import _invoke, _invoke_stream

    denials: list[tuple[str, str]] = []
    check = IAMRequestBase.check_action_permitted

    def judged(self, resource):
        try:
            check(self, resource)
        except Exception:
            denials.append((self._action, resource))
            raise

    monkeypatch.setattr(IAMRequestBase, "check_action_permitted", judged)
    monkeypatch.setattr(SageMakerResponse, "_determine_resource", _sagemaker_resource,
                        raising=False)
    monkeypatch.setattr(SageMakerResponse, "update_endpoint", _update_endpoint, raising=False)
    monkeypatch.setattr(S3Response, "_authenticate_and_authorize_s3_action",
                        _authorize_each_key(S3Response._authenticate_and_authorize_s3_action))
    with moto_server() as url:
        for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_CONFIG_FILE": str(tmp_path / "none"),
                     "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                     "HF_HUB_OFFLINE": "1", "LMIFLOW_RETRY_BASE_S": "0.01"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        s3 = s3_client(url)
        s3.create_bucket(Bucket=BUCKET)
        for name, data in FILES.items():
            s3.put_object(Bucket=BUCKET, Key=f"models/tiny/{name}", Body=data)
        monkeypatch.setattr(SageMakerTarget, "invoke", _invoke)
        monkeypatch.setattr(SageMakerTarget, "invoke_stream", _invoke_stream)
        # moto has no Service Quotas: the account lists no endpoint quota (None per type)
        monkeypatch.setattr(SageMakerTarget, "endpoint_quotas",
                            lambda self, types: dict.fromkeys(types))

        def user(name: str, policy: dict) -> dict[str, str]:
            iam = session().client("iam", endpoint_url=url)
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName="only",
                                PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=name)["AccessKey"]
            return {"aws_access_key_id": key["AccessKeyId"],
                    "aws_secret_access_key": key["SecretAccessKey"]}

        def as_runner(policy: dict, **others: dict):
            """Users holding only `policy` (the runner) and each of `others` (name: policy),
            made before IAM is on; the runner's keys in the environment. Returns an admin's
            boto3 session (for the test's own look at what the runs left), and become(name):
            another of the users' keys in the environment."""
            import boto3

            admin = user("admin", {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]})
            keys = {name: user(name, p) for name, p in
                    {"lmiflow-runner": policy, **others}.items()}

            def become(name: str) -> None:
                monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys[name]["aws_access_key_id"])
                monkeypatch.setenv("AWS_SECRET_ACCESS_KEY",
                                   keys[name]["aws_secret_access_key"])
                pipeline._target.cache_clear()

            become("lmiflow-runner")
            import httpx

            # every request from now on is authorized (moto's INITIAL_NO_AUTH_ACTION_COUNT)
            httpx.post(f"{url}/moto-api/reset-auth", content=b"0", timeout=10
                       ).raise_for_status()
            return boto3.Session(region_name="us-east-1", **admin), become

        pipeline._target.cache_clear()
        try:
            yield url, denials, as_runner
        finally:
            import httpx

            httpx.post(f"{url}/moto-api/reset-auth", content=b"inf", timeout=10)
            pipeline._target.cache_clear()


def test_deploys_as_a_user_holding_only_the_runner_policy(iam_world, prefect_harness,
                                                          tmp_path, capsys, monkeypatch):
    from lmiflow.targets.sagemaker import SageMakerTarget

    url, denials, as_runner = iam_world
    first = spec(MODEL)
    config = write_config(tmp_path, first)
    assert main(["iam", config, "--json"]) == 0
    policies = json.loads(capsys.readouterr().out)
    admin, become = as_runner(policies["runner"], deleter=policies["delete"])
    sm = admin.client("sagemaker", endpoint_url=url)

    _, report = run(first, tmp_path / "first")
    assert report["status"] == "promoted", report["error"]
    assert denials == []

    # blue/green: another candidate (a longer context: another spec hash) replaces it
    second = spec(MODEL).model_copy(update={"workload": first.workload.model_copy(
        update={"max_input_tokens": 96})})
    _, report = run(second, tmp_path / "second")
    assert report["status"] == "promoted", report["error"]
    assert [r["operation"] for r in report["requests"]].count("UpdateEndpoint") == 1
    assert sm.describe_endpoint(EndpointName="weights-prod")["EndpointConfigName"] == \
        report["candidate_endpoint"].replace("-c-", "-ec-")
    assert denials == []

    # a rejected run: its candidate is removed, production stays on the second run's config
    data = first.model_dump(mode="json")
    data["workload"]["max_input_tokens"] = 128
    data["gates"] = [{"metric": "error_rate", "stat": "value", "op": "<=", "threshold": 0.0}]
    rejected = DeploymentSpec.model_validate(data)

    def failing_stream(self, name, payload):
        raise RuntimeError("the model server broke (injected)")

    monkeypatch.setattr(SageMakerTarget, "invoke_stream", failing_stream)
    _, report3 = run(rejected, tmp_path / "rejected")
    assert report3["status"] == "rejected", report3["error"]
    assert denials == []
    names = [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    assert names == ["weights-prod"]
    assert sm.describe_endpoint(EndpointName="weights-prod")["EndpointConfigName"] == \
        report["candidate_endpoint"].replace("-c-", "-ec-")

    # teardown is not the runner's: it may not delete production
    import boto3
    from botocore.exceptions import ClientError

    runner = boto3.Session(region_name="us-east-1").client(  # the runner's keys (env)
        "sagemaker", endpoint_url=url)
    with pytest.raises(ClientError) as err:
        runner.delete_endpoint(EndpointName="weights-prod")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert denials == [("sagemaker:DeleteEndpoint",
                        "arn:aws:sagemaker:us-east-1:123456789012:endpoint/weights-prod")]
    denials.clear()
    _delete_as_its_own_user(admin, url, become, denials, capsys)


def _delete_as_its_own_user(admin, url, become, denials, capsys):
    """`endpoints delete` as a user holding only `lmiflow iam`'s delete policy, after an
    interrupted run left a candidate model on staged weights and a serving.properties folder
    (as runs with packaging s3 stage): every request allowed, what only the endpoint used
    removed, the user's own model prefix and the reports kept."""
    s3 = admin.client("s3", endpoint_url=url)
    staged = f"lf/weights/org--tiny/{'c' * 40}/"
    for name in ("config.json", "model.safetensors"):
        s3.put_object(Bucket=BUCKET, Key=staged + name, Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="lf/weights-prod-m-0000abcd/serving.properties", Body=b"")
    sm = admin.client("sagemaker", endpoint_url=url)
    role = sm.describe_model(ModelName=sm.list_models()["Models"][0]["ModelName"])
    sm.create_model(ModelName="weights-prod-m-0000abcd", ExecutionRoleArn=role[
        "ExecutionRoleArn"], PrimaryContainer={**role["PrimaryContainer"], "ModelDataSource": {
            "S3DataSource": {"S3Uri": f"s3://{BUCKET}/{staged}", "S3DataType": "S3Prefix",
                             "CompressionType": "None"}}})
    become("deleter")
    assert main(["endpoints", "delete", "weights-prod", "--target", "sagemaker",
                 "--region", "us-east-1"]) == 0  # the s3_uri from the endpoint's tag
    out = capsys.readouterr().out
    assert denials == [], out
    assert sm.list_models()["Models"] == [] and sm.list_endpoints()["Endpoints"] == []
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert not any(k.startswith((staged, "lf/weights-prod-m-", "lf/leases/")) for k in keys)
    assert "lf/weights-prod/baseline.json" not in keys
    assert {k for k in keys if k.startswith("models/tiny/")} == {
        f"models/tiny/{n}" for n in FILES}  # the user's own prefix: never lmiflow's to delete
    assert any(k.startswith("lf/weights-prod/reports/") for k in keys)
    assert "kept s3://lmiflow-bucket/lf/weights-prod/reports/" in out
