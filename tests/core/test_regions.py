"""Region names from botocore's partition data, and the config's use of them."""

from __future__ import annotations

import pytest

from lmiflow.errors import UserInputError
from lmiflow.regions import known_regions, partition_of
from lmiflow.spec import parse_spec


def test_every_region_botocore_lists_is_accepted():
    regions = known_regions()
    assert "us-east-1" in regions and len(regions) > 30
    assert all(partition_of(r) for r in regions)


@pytest.mark.parametrize(
    ("region", "partition"),
    [
        ("us-east-1", "aws"),
        ("ap-southeast-7", "aws"),
        ("mx-central-1", "aws"),
        ("cn-northwest-1", "aws-cn"),
        ("us-gov-west-1", "aws-us-gov"),
        ("eusc-de-east-1", "aws-eusc"),  # the old hand-written pattern rejected this one
        ("eu-isoe-west-1", "aws-iso-e"),
        ("us-isob-east-1", "aws-iso-b"),
        ("ap-southeast-10", "aws"),  # two-digit numbers match the partition's pattern
    ],
)
def test_partitions(region, partition):
    assert partition_of(region) == partition


@pytest.mark.parametrize("region", ["moon-1", "US-EAST-1", "aws-global", "us-east", "useast1",
                                    "xx-east-1", ""])
def test_not_regions(region):
    assert partition_of(region) is None


def _sm(region: str, role: str = "arn:aws:iam::123456789012:role/r") -> dict:
    return {"name": "ep", "model": {"id": "org/m"},
            "workload": {"max_input_tokens": 8, "max_output_tokens": 8, "concurrency": 1},
            "target": {"kind": "sagemaker", "region": region, "role_arn": role,
                       "s3_uri": "s3://bucket/p/"}}


def test_config_region_and_role_partition():
    assert parse_spec(_sm("eusc-de-east-1", "arn:aws-eusc:iam::123456789012:role/r"))
    with pytest.raises(UserInputError) as err:
        parse_spec(_sm("moon-1"))
    assert err.value.field == "target.region"
    with pytest.raises(UserInputError) as err:
        parse_spec(_sm("cn-north-1"))  # an arn:aws role cannot be used in aws-cn
    assert err.value.field == "target.role_arn" and "arn:aws-cn:" in err.value.reason
