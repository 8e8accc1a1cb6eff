"""The report's endpoint section: the host AMI with why, routing, and the promotion's peak."""

from __future__ import annotations

from lmiflow.report.model import (
    HostSettings,
    PromotionPlan,
    ReportedModel,
    RunReport,
    Versions,
)
from lmiflow.report.sections import build_sections


def _report(**kw) -> RunReport:
    return RunReport(lmiflow_version="0", started_at="2026-11-29T19:46:40+00:00",
                     endpoint="prod", target="sagemaker",
                     model=ReportedModel(id="org/m", revision=None),
                     versions=Versions(lmiflow="0", model_revision="main"),
                     config={"name": "prod"}, **kw)


def test_endpoint_section_says_host_routing_and_peak():
    r = _report(
        host=HostSettings(inference_ami_version="al2-ami-sagemaker-inference-gpu-3-1",
                          routing_strategy="LEAST_OUTSTANDING_REQUESTS",
                          why="image built for CUDA 12.4"),
        promotion_plan=PromotionPlan(
            strategy="LINEAR", instance_type="ml.g5.2xlarge", instance_count=4,
            traffic_step="25 % of 4 = 1 instance(s)", termination_wait_s=600, alarms=["a"],
            peak_instances={"ml.g5.2xlarge": 8}, peak_assumption="a redeploy",
            quota_names={"ml.g5.2xlarge": "ml.g5.2xlarge for endpoint usage"}))
    (section,) = [s for s in build_sections(r) if s.anchor == "endpoint"]
    (bullets,) = section.blocks
    text = "\n".join(bullets.items)
    assert "host AMI: al2-ami-sagemaker-inference-gpu-3-1 (image built for CUDA 12.4)" in text
    assert "routing: LEAST_OUTSTANDING_REQUESTS" in text
    assert "LINEAR, first step 25 % of 4 = 1 instance(s), old fleet kept 600 s" in text
    assert "peak fleet: 8 x ml.g5.2xlarge (a redeploy); quota ml.g5.2xlarge for endpoint usage" \
        in text


def test_no_endpoint_section_without_a_plan():
    assert not [s for s in build_sections(_report()) if s.anchor == "endpoint"]
