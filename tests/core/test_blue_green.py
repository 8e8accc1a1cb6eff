"""Promotion the fleet can do: traffic-shift sizes against the instance count, peak fleets."""

from __future__ import annotations

import pytest

from lmiflow.targets.blue_green import fleet_peak, quota_error, traffic_shift_error


@pytest.mark.parametrize(
    ("strategy", "canary", "linear", "count", "field", "smallest"),
    [
        ("ALL_AT_ONCE", 10, 20, 1, None, None),
        ("CANARY", 10, 20, 1, "promotion.strategy", "instance.count 2"),
        ("CANARY", 50, 20, 2, None, None),  # 1 of 2 instances
        ("CANARY", 49, 20, 2, "promotion.canary_size_pct", "50 %"),  # 0.98 of an instance
        ("CANARY", 10, 20, 10, None, None),
        ("CANARY", 10, 20, 4, "promotion.canary_size_pct", "25 %"),
        ("CANARY", 34, 20, 3, None, None),
        ("LINEAR", 10, 50, 1, "promotion.strategy", "instance.count 2"),
        ("LINEAR", 10, 50, 2, None, None),
        ("LINEAR", 10, 20, 4, "promotion.linear_step_pct", "25 %"),
        ("LINEAR", 10, 10, 10, None, None),
        ("LINEAR", 10, 10, 20, None, None),  # 10 % is the API's floor, 2 instances here
    ],
)
def test_traffic_shift_sizes(strategy, canary, linear, count, field, smallest):
    err = traffic_shift_error(strategy, canary, linear, count)
    if field is None:
        assert err is None
    else:
        assert err is not None and err[0] == field and smallest in err[1]


def test_peak_at_plan_time_assumes_a_redeploy_of_the_same_shape():
    peak = fleet_peak("ml.p5.48xlarge", 2)
    assert peak.instances == {"ml.p5.48xlarge": 4}
    assert peak.quota_names == {"ml.p5.48xlarge": "ml.p5.48xlarge for endpoint usage"}


def test_peak_with_the_production_described():
    assert fleet_peak("ml.g5.2xlarge", 2, {}).instances == {"ml.g5.2xlarge": 2}
    mixed = fleet_peak("ml.g6e.xlarge", 1, {"ml.g5.12xlarge": 2})
    assert mixed.instances == {"ml.g5.12xlarge": 2, "ml.g6e.xlarge": 1}


def test_quota():
    peak = fleet_peak("ml.p5.48xlarge", 1)
    assert quota_error(peak, {"ml.p5.48xlarge": 2.0}) is None
    assert quota_error(peak, {"ml.p5.48xlarge": None}) is None  # unknown: not checked here
    err = quota_error(peak, {"ml.p5.48xlarge": 1.0})
    assert err is not None
    assert "2 x ml.p5.48xlarge" in err and "'ml.p5.48xlarge for endpoint usage' is 1" in err
