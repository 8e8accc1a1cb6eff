"""Bad autoscaling numbers exit 2 at plan time with one line naming the field, nothing
created; a good section shows its numbers in the dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmiflow.cli import main
from tests.cli.test_bad_input import check_exits_2, isolated  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "llama-3.1-8b-autoscaling.yaml"


def _config(**autoscaling) -> str:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["autoscaling"] = {**data["autoscaling"], **autoscaling}
    return yaml.safe_dump(data)


# The example's plan (bundled Llama-3.1-8B snapshot, 16 concurrent, TTFT p95 gate 2 s, TPOT
# gate 50 ms): 2 x ml.g6.12xlarge at tp 2, two copies each, a batch of 4 per copy (16 / 4).
CASES = {
    "min above max": (_config(min=3, max=2), "autoscaling.min"),
    "max above instance.max_count": (_config(max=5), "autoscaling.max"),
    "target neither auto nor a count": (_config(target="lots", headroom_pct=None),
                                        "autoscaling.target"),
    "headroom with a fixed target": (_config(target=2), "autoscaling.headroom_pct"),
    "unknown key": (_config(cooldown=5), "autoscaling.cooldown"),
    # the plan's numbers
    "target above what a copy holds": (_config(target=5, headroom_pct=None),
                                       "autoscaling.target"),
    "max below the plan's count": (_config(min=1, max=1), "autoscaling.max"),
    # an inference component scales its copies (inference_component.min/max_copies) instead
    "with inference components": (_config().replace("target:\n", "target:\n  mode: "
                                                    "inference_component\n", 1),
                                  "autoscaling"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_autoscaling_exits_2_naming_the_field(case, isolated, capsys):  # noqa: F811
    check_exits_2(*CASES[case], isolated, capsys)


def test_min_above_the_plans_starting_count_names_min(isolated, capsys):  # noqa: F811
    data = yaml.safe_load(_config(min=4, max=4, target=2, headroom_pct=None))
    data["instance"]["count"] = 1
    data["gates"] = [g for g in data["gates"] if g["metric"] != "tpot_ms"]  # 1 instance holds
    data["workload"]["concurrency"] = 4
    data["promotion"] = {"strategy": "ALL_AT_ONCE"}
    check_exits_2(yaml.safe_dump(data), "autoscaling.min", isolated, capsys)


def test_dry_run_lists_the_scaling_with_the_plans_target(isolated, capsys):  # noqa: F811
    assert main(["deploy", str(EXAMPLE), "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    a = report["autoscaling"]
    chosen = report["plan"]["chosen"]
    # auto: min(max_concurrency_per_copy, concurrency_per_copy) less 20 %, rounded down
    ceiling = min(chosen["max_concurrency_per_copy"], chosen["concurrency_per_copy"])
    assert a["target_per_copy"] == int(ceiling * 0.8) >= 1
    (register,) = [r for r in report["requests"] if r["operation"] == "RegisterScalableTarget"]
    (policy,) = [r for r in report["requests"] if r["operation"] == "PutScalingPolicy"]
    assert register["params"]["MinCapacity"] == 2 and register["params"]["MaxCapacity"] == 4
    tt = policy["params"]["TargetTrackingScalingPolicyConfiguration"]
    assert tt["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "SageMakerVariantConcurrentRequestsPerModelHighResolution")
    assert tt["TargetValue"] == a["target_per_copy"] * chosen["model_copies"]
    assert (tt["ScaleInCooldown"], tt["ScaleOutCooldown"]) == (600, 120)
    assert register["step"] == policy["step"] == "autoscale"
