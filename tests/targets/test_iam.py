"""The IAM policies generated from a run's requests: every request is allowed, on the names a
later run of the same config uses too, and nothing broader (no `*` actions, `*` resources
only for the List calls IAM cannot scope). The evaluator (tests/iam_judge.py) is a small,
independent reading of IAM's rules (action match, ARN wildcards, String conditions)."""

from __future__ import annotations

from lmiflow.targets.aws_requests import AwsRequest
from lmiflow.targets.iam import TRUST_POLICY, execution_role_policy, generalise, runner_policy
from tests.iam_judge import allowed

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
SM = "arn:aws:sagemaker:us-east-1:123456789012:"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.33.0-lmi15.0.0-cu128"


def r(service, operation, **params):
    return AwsRequest(service=service, operation=operation, params=params)


RUN = [
    r("s3", "ListObjectsV2", Bucket="bkt", Prefix="lf/weights/org--m/" + "a" * 40 + "/"),
    r("s3", "CreateMultipartUpload", Bucket="bkt",
      Key="lf/weights/org--m/" + "a" * 40 + "/model.safetensors"),
    r("s3", "HeadObject", Bucket="bkt", Key="lf/weights/org--m/" + "a" * 40 + "/config.json"),
    r("s3", "AbortMultipartUpload", Bucket="bkt", Key="lf/weights/org--m/" + "a" * 40 + "/x",
      UploadId="u"),
    r("s3", "ListMultipartUploads", Bucket="bkt", Prefix="lf/weights/org--m/" + "a" * 40 + "/"),
    r("sagemaker", "ListModels", NameContains="Prod-"),
    r("sagemaker", "CreateModel", ModelName="Prod-m-0123abcd", ExecutionRoleArn=ROLE,
      PrimaryContainer={"Image": IMAGE, "ModelDataSource": {"S3DataSource": {
          "S3Uri": "s3://bkt/lf/weights/org--m/" + "a" * 40 + "/", "S3DataType": "S3Prefix",
          "CompressionType": "None"}}},
      VpcConfig={"Subnets": ["subnet-0123abcd"], "SecurityGroupIds": ["sg-0123abcd"]},
      Tags=[{"Key": "project", "Value": "lmiflow"}]),
    r("sagemaker", "CreateEndpointConfig", EndpointConfigName="Prod-ec-0123abcd",
      ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "Prod-m-0123abcd"}],
      Tags=[{"Key": "project", "Value": "lmiflow"}]),
    r("sagemaker", "UpdateEndpoint", EndpointName="Prod", EndpointConfigName="Prod-ec-0123abcd",
      DeploymentConfig={"AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "prod-5xx"}]}}),
    r("sagemaker", "ListTags", ResourceArn=SM + "endpoint/prod"),
    r("sagemaker-runtime", "InvokeEndpointWithResponseStream", EndpointName="Prod-c-0123abcd",
      Body=b"{}"),
    r("s3", "PutObject", Bucket="bkt", Key="lf/Prod/baseline.json", Body=b"{}"),
]


def test_every_request_is_allowed_by_the_runner_policy():
    p = runner_policy(RUN, REGION, ROLE)
    commit = "a" * 40
    checks = [
        ("s3:ListBucket", "arn:aws:s3:::bkt", {"s3:prefix": f"lf/weights/org--m/{commit}/"}),
        ("s3:PutObject", f"arn:aws:s3:::bkt/lf/weights/org--m/{commit}/model.safetensors", None),
        ("s3:GetObject", f"arn:aws:s3:::bkt/lf/weights/org--m/{commit}/config.json", None),
        ("s3:AbortMultipartUpload", f"arn:aws:s3:::bkt/lf/weights/org--m/{commit}/x", None),
        ("s3:ListBucketMultipartUploads", "arn:aws:s3:::bkt", None),
        ("sagemaker:ListModels", "*", None),
        ("sagemaker:CreateModel", SM + "model/prod-m-0123abcd", None),
        ("sagemaker:AddTags", SM + "model/prod-m-0123abcd", None),
        ("iam:PassRole", ROLE, {"iam:PassedToService": "sagemaker.amazonaws.com"}),
        ("sagemaker:CreateEndpointConfig", SM + "endpoint-config/prod-ec-0123abcd", None),
        ("sagemaker:UpdateEndpoint", SM + "endpoint/prod", None),
        ("cloudwatch:DescribeAlarms", "arn:aws:cloudwatch:us-east-1:123456789012:alarm:prod-5xx",
         None),
        ("sagemaker:ListTags", SM + "endpoint/prod", None),
        ("sagemaker:InvokeEndpointWithResponseStream", SM + "endpoint/prod-c-0123abcd", None),
        ("s3:PutObject", "arn:aws:s3:::bkt/lf/Prod/baseline.json", None),
    ]
    for action, resource, ctx in checks:
        assert allowed(p, action, resource, ctx), (action, resource)


def test_the_policy_serves_later_runs_but_nothing_else():
    p = runner_policy(RUN, REGION, ROLE)
    # another spec hash, another commit: the same config's next run
    assert allowed(p, "sagemaker:CreateModel", SM + "model/prod-m-feedbeef")
    assert allowed(p, "s3:PutObject", "arn:aws:s3:::bkt/lf/weights/org--m/" + "b" * 40 + "/x")
    # other endpoints, other buckets, other actions, PassRole to another service
    assert not allowed(p, "sagemaker:CreateModel", SM + "model/other-m-0123abcd")
    assert not allowed(p, "sagemaker:DeleteEndpoint", SM + "endpoint/prod")
    assert not allowed(p, "s3:PutObject", "arn:aws:s3:::other/lf/weights/org--m/x")
    assert not allowed(p, "s3:ListBucket", "arn:aws:s3:::bkt", {"s3:prefix": "secrets/"})
    assert not allowed(p, "iam:PassRole", ROLE, {"iam:PassedToService": "ec2.amazonaws.com"})
    for st in p["Statement"]:
        assert all("*" not in a for a in st["Action"])
        if st["Resource"] == ["*"]:
            assert all(a.startswith("sagemaker:List") for a in st["Action"]), st


def test_execution_role_reads_the_model_prefix_pulls_the_image_and_writes_logs():
    p = execution_role_policy(RUN, REGION, ROLE)
    prefix = "lf/weights/org--m/" + "a" * 40 + "/"
    assert allowed(p, "s3:GetObject", f"arn:aws:s3:::bkt/{prefix}model.safetensors")
    assert allowed(p, "s3:ListBucket", "arn:aws:s3:::bkt", {"s3:prefix": prefix})
    assert not allowed(p, "s3:PutObject", f"arn:aws:s3:::bkt/{prefix}model.safetensors")
    assert allowed(p, "ecr:BatchGetImage",
                   "arn:aws:ecr:us-east-1:763104351884:repository/djl-inference")
    assert allowed(p, "ecr:GetAuthorizationToken", "*")
    assert allowed(p, "logs:PutLogEvents", "arn:aws:logs:us-east-1:123456789012:log-group:"
                   "/aws/sagemaker/Endpoints/prod:log-stream:AllTraffic/i-1")
    assert allowed(p, "ec2:CreateNetworkInterface", "*")  # the request has a VpcConfig
    no_vpc = [x for x in RUN if x.operation != "CreateModel"]
    assert not allowed(execution_role_policy(no_vpc, REGION, ROLE), "ec2:CreateNetworkInterface",
                       "*")
    assert TRUST_POLICY["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}


def test_generalise_keeps_everything_but_hashes_and_commits():
    assert generalise("prod-m-0123abcd") == "prod-m-*"
    assert generalise("prod-c-xxxxxxxx") == "prod-c-*"
    assert generalise("lf/weights/org--m/" + "f" * 40 + "/a.json") == "lf/weights/org--m/*/a.json"
    assert generalise("prod-metrics") == "prod-metrics"


def test_inference_components_and_their_scaling_are_allowed_and_scoped():
    comp = SM + "inference-component/"
    run = [
        r("sagemaker", "CreateInferenceComponent", InferenceComponentName="llama-ic-0123abcd",
          EndpointName="Prod-c-0123abcd", Tags=[{"Key": "project", "Value": "lmiflow"}]),
        r("sagemaker", "UpdateInferenceComponent", InferenceComponentName="llama"),
        r("application-autoscaling", "RegisterScalableTarget", ServiceNamespace="sagemaker",
          ResourceId="inference-component/llama",
          ScalableDimension="sagemaker:inference-component:DesiredCopyCount"),
        r("cloudwatch", "PutMetricAlarm", AlarmName="llama-no-capacity"),
    ]
    p = runner_policy(run, REGION, ROLE)
    slr = ("arn:aws:iam::123456789012:role/aws-service-role/sagemaker.application-autoscaling."
           "amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")
    # a later run's candidate (another spec hash) too
    assert allowed(p, "sagemaker:CreateInferenceComponent", comp + "llama-ic-89abcdef")
    assert allowed(p, "sagemaker:AddTags", comp + "llama-ic-89abcdef")
    assert allowed(p, "sagemaker:UpdateInferenceComponent", comp + "llama")
    assert not allowed(p, "sagemaker:UpdateInferenceComponent", comp + "another-model")
    assert allowed(p, "application-autoscaling:RegisterScalableTarget", "*")
    assert allowed(p, "iam:CreateServiceLinkedRole", slr,
                   {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"})
    assert not allowed(p, "iam:CreateServiceLinkedRole", slr,
                       {"iam:AWSServiceName": "ec2.amazonaws.com"})
    assert allowed(p, "cloudwatch:PutMetricAlarm",
                   "arn:aws:cloudwatch:us-east-1:123456789012:alarm:llama-no-capacity")
    assert not allowed(p, "cloudwatch:PutMetricAlarm",
                       "arn:aws:cloudwatch:us-east-1:123456789012:alarm:other")
