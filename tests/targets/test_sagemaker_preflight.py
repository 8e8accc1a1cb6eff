"""What the SageMaker target asks before a promotion is attempted: do the rollback alarms exist
(CloudWatch DescribeAlarms), what is the account's endpoint quota per instance type (Service
Quotas ListServiceQuotas), what does production run now (DescribeEndpoint +
DescribeEndpointConfig). Each request is checked by Stubber against the service model."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from lmiflow.targets.sagemaker import SageMakerTarget

ARN = "arn:aws:sagemaker:us-east-1:123456789012:"


@pytest.fixture
def target(monkeypatch, tmp_path):
    for k, v in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                 "AWS_CONFIG_FILE": str(tmp_path / "none"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(k, v)
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")
    return SageMakerTarget("us-east-1", session=session)


def test_missing_alarms(target):
    with Stubber(target.cloudwatch) as stub:
        stub.add_response(
            "describe_alarms",
            {"MetricAlarms": [{"AlarmName": "prod-5xx"}],
             "CompositeAlarms": [{"AlarmName": "prod-any"}]},
            {"AlarmNames": ["prod-5xx", "prod-any", "prod-p99"],
             "AlarmTypes": ["MetricAlarm", "CompositeAlarm"]})
        assert target.missing_alarms(["prod-5xx", "prod-any", "prod-p99"]) == ["prod-p99"]
        stub.assert_no_pending_responses()
    assert target.missing_alarms([]) == []  # no call at all


def test_endpoint_quotas_across_pages(target):
    def quota(name: str, value: float) -> dict:
        return {"ServiceCode": "sagemaker", "QuotaName": name, "Value": value,
                "QuotaCode": "L-" + str(abs(hash(name)) % 10**8)}

    with Stubber(target.quotas) as stub:
        stub.add_response("list_service_quotas", {
            "Quotas": [quota("ml.g5.2xlarge for endpoint usage", 4.0),
                       quota("ml.g5.2xlarge for training job usage", 9.0)],
            "NextToken": "page2"}, {"ServiceCode": "sagemaker"})
        stub.add_response("list_service_quotas", {
            "Quotas": [quota("ml.p5.48xlarge for endpoint usage", 0.0)]},
            {"ServiceCode": "sagemaker", "NextToken": "page2"})
        got = target.endpoint_quotas(["ml.g5.2xlarge", "ml.p5.48xlarge", "ml.g6.xlarge"])
        stub.assert_no_pending_responses()
    assert got == {"ml.g5.2xlarge": 4.0, "ml.p5.48xlarge": 0.0, "ml.g6.xlarge": None}


def test_production_fleet(target):
    with Stubber(target.sm) as stub:
        stub.add_response("describe_endpoint", {
            "EndpointName": "prod", "EndpointArn": ARN + "endpoint/prod",
            "EndpointConfigName": "prod-ec-aaaaaaaa", "EndpointStatus": "InService",
            "CreationTime": "2026-01-01T00:00:00Z", "LastModifiedTime": "2026-01-01T00:00:00Z",
            "ProductionVariants": [{"VariantName": "AllTraffic", "CurrentInstanceCount": 3}],
        }, {"EndpointName": "prod"})
        stub.add_response("describe_endpoint_config", {
            "EndpointConfigName": "prod-ec-aaaaaaaa",
            "EndpointConfigArn": ARN + "endpoint-config/prod-ec-aaaaaaaa",
            "CreationTime": "2026-01-01T00:00:00Z",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m",
                                    "InstanceType": "ml.g5.12xlarge",
                                    "InitialInstanceCount": 2}],
        }, {"EndpointConfigName": "prod-ec-aaaaaaaa"})
        # auto scaling moved it to 3: the endpoint's count wins over the config's
        assert target.production_fleet("prod") == {"ml.g5.12xlarge": 3}
        stub.add_client_error("describe_endpoint", "ValidationException",
                              "Could not find endpoint \"prod\".")
        assert target.production_fleet("prod") == {}
        stub.assert_no_pending_responses()
