"""The run report as one typed object: what a deploy, plan or dry run produced, step by step.

The flow fills a RunReport with the typed results of each step (the sizing Plan, the
BenchResult, the gate Verdict...) and it is dumped to JSON once, when the report is written.
Field order is report.json's key order; every field DESIGN.md names keeps its place and shape.
`schema_version` counts incompatible changes to this shape; the JSON Schema that ships with
the package (report_schema.json, `lmiflow report-schema`) is generated from this model.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_serializer

from lmiflow.bench.gates import Verdict
from lmiflow.bench.metrics import BenchResult
from lmiflow.report.outcome import Outcome, ProductionState
from lmiflow.sizing.autoscaling import ScalingPlan
from lmiflow.sizing.calibration import Fit
from lmiflow.sizing.model_spec import ModelSpec
from lmiflow.sizing.planner import Plan
from lmiflow.targets.components_plan import ComponentPlan
from lmiflow.targets.staging import StagingReport
from lmiflow.targets.weights import WeightsPlan

SCHEMA_VERSION = 1
SCHEMA_FILE = "report.schema.json"  # package data next to this module
RunStatus = Literal["promoted", "rejected", "failed", "planned"]
StepStatus = Literal["running", "completed", "failed", "skipped"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepRecord(_Strict):
    """One pipeline step: its status, when it started (epoch seconds) and how long it took."""

    name: str
    status: StepStatus
    started_at: float | None = None
    seconds: float = 0.0
    summary: str = ""


class SmokeTest(_Strict):
    """One prompt sent to an endpoint, and what came back."""

    passed: bool
    output: str
    endpoint: str | None = None
    seconds: float | None = None
    error: str | None = Field(default=None, description="Why it failed (None when it passed).")


class Promotion(_Strict):
    """What promotion did to production."""

    action: str = Field(description="created, updated (<strategy>), or already serving it.")
    previous_config: str | None = Field(description="The endpoint config production ran before.")
    removed: list[str] = Field(default_factory=list, description="Resources deleted after.")
    production_smoke_test: SmokeTest | None = Field(
        description="None: production has nothing running (starts_on_request) and was not "
                    "invoked, since a request would start it.")
    starts_on_request: bool = Field(
        default=False, description="Production was left with no copy running (an inference "
        "component scaled to zero): its next request starts one and waits the cold start.")


class HostSettings(_Strict):
    """The production variant's host: its AMI (so its NVIDIA driver) and request routing."""

    inference_ami_version: str
    routing_strategy: str
    why: str = Field(description="Why this AMI: the image's CUDA, or a pin in the config.")
    warning: str | None = None


class PromotionPlan(_Strict):
    """How production will change, and the most instances the run holds at once."""

    strategy: str
    instance_type: str
    instance_count: int
    traffic_step: str | None = Field(default=None, description="The first step, in instances.")
    termination_wait_s: int = 0
    alarms: list[str] = Field(default_factory=list, description="They must exist.")
    peak_instances: dict[str, int] = Field(
        description="Instance type -> instances at the peak (candidate or green + production).")
    peak_assumption: str
    quota_names: dict[str, str] = Field(
        description="Instance type -> the Service Quotas quota the peak is checked against.")


class LevelComparison(_Strict):
    """One benchmark level: the latency model's prediction for it and the measured p50s;
    error is (predicted - measured) / measured, in %."""

    concurrency: int
    input_tokens: int = Field(description="Measured mean prompt length the prediction used.")
    output_tokens: int = Field(description="Measured mean output length the prediction used.")
    predicted_ttft_ms: float
    measured_ttft_ms: float | None
    ttft_error_pct: float | None
    predicted_tpot_ms: float
    measured_tpot_ms: float | None
    tpot_error_pct: float | None
    calibrated: bool = Field(description="The prediction used fitted factors, not defaults.")


class PredictedVsMeasured(_Strict):
    """The benchmark next to what the planner predicted for the chosen option, per level, and
    what this run added to the calibration store (sizing.calibration)."""

    accelerator: str | None = None
    engine: str | None = None
    tensor_parallel_degree: int | None = None
    image_version: str | None = None
    fit: str | None = Field(default=None, description="The factors the predictions used: the "
                            "engine's defaults, or fitted from N benchmark records.")
    fit_records: int = 0
    levels: list[LevelComparison] = Field(default_factory=list)
    recorded: int = Field(0, description="Records this run appended to the store.")
    store: str | None = Field(default=None, description="Where the store is.")
    refit: Fit | None = Field(default=None, description="The store's fit for this accelerator "
                              "and engine after this run's records: what the next plan uses.")
    notes: list[str] = Field(default_factory=list, description="Why a level or the whole "
                             "benchmark was not compared or not recorded.")


class ShownRequest(_Strict):
    """One AWS request of the run: botocore's service and operation names and the exact
    parameters, secrets masked; `step` sends it, `when` says when if not exactly once."""

    service: str
    operation: str
    params: dict[str, Any]
    step: str | None = None
    when: str | None = None


class Versions(_Strict):
    lmiflow: str
    prefect: str | None = None
    lmi_image: str | None = None
    model_revision: str


class _ReportedModelBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    revision: str | None = None

    @model_serializer(mode="wrap")
    def _only_what_is_known(self, handler: Any) -> Any:
        # A run that failed before fetch_config knows only the config's id and revision: the
        # report then says just that, rather than a column of nulls.
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set}


# The model as the report names it: the config's id and revision, then (after fetch_config)
# every ModelSpec field at the same level, where it came from, and the KV bytes per token from
# the plan. Built from ModelSpec's fields so a field added to the sizing model appears here.
ReportedModel = create_model(
    "ReportedModel",
    __base__=_ReportedModelBase,
    __doc__="The model: config id and revision, then ModelSpec's fields once they are known.",
    **{name: (info.annotation | None, None) for name, info in ModelSpec.model_fields.items()},
    source=(str | None, Field(default=None, description="local:<path>, hub:<id>@<rev> or "
                                                       "snapshot:<dir>")),
    kv_cache_bytes_per_token=(int | None, None),
)


class RunReport(_Strict):
    """report.json. `status` is `failed` until the run says otherwise."""

    schema_version: int = SCHEMA_VERSION
    lmiflow_version: str
    run_id: str | None = None
    started_at: str = Field(description="ISO 8601, UTC, seconds.")
    finished_at: str | None = None
    status: RunStatus = "failed"
    endpoint: str = Field(description="The production endpoint's name.")
    candidate_endpoint: str | None = None
    target: str = Field(description="Where the endpoints live: local or sagemaker.")
    failed_step: str | None = None
    error: str | None = None
    model: ReportedModel  # type: ignore[valid-type]
    steps: list[StepRecord] = Field(default_factory=list)
    plan: Plan | None = Field(default=None, description="As `lmiflow plan --json` prints it.")
    serving_properties: str | None = Field(default=None, description="The file's text.")
    image_uri: str | None = None
    smoke_test: SmokeTest | None = None
    benchmark: BenchResult | None = Field(default=None, description="As `bench --json`.")
    gate: Verdict | None = None
    baseline: BenchResult | None = Field(
        default=None, description="Production's last promoted benchmark, when there is one.")
    versions: Versions
    cleanup: list[str] | None = Field(
        default=None, description="Candidate resources removed after a run that did not promote.")
    config: dict[str, Any] = Field(description="The deployment config the run used.")
    promotion: Promotion | None = None
    weights: WeightsPlan | None = Field(
        default=None, description="Where the weights are, who may read them, and how the "
        "container gets them (Hub download, staged into S3, or an s3:// prefix).")
    staging: StagingReport | None = Field(
        default=None, description="The stage_weights step: files uploaded or skipped, bytes, "
        "seconds.")
    requests: list[ShownRequest] | None = Field(
        default=None, description="Every AWS request the run sends, in order, valid for "
        "botocore's service model (SageMaker target).")
    iam_policy: dict[str, Any] | None = Field(
        default=None, description="The least-privilege IAM policy of the identity that runs "
        "the flow, generated from `requests`.")
    execution_role_policy: dict[str, Any] | None = Field(
        default=None, description="What the SageMaker execution role needs (S3 read of the "
        "model prefixes, ECR pull, logs, VPC network interfaces).")
    host: HostSettings | None = Field(
        default=None, description="SageMaker: InferenceAmiVersion and RoutingConfig.")
    promotion_plan: PromotionPlan | None = Field(
        default=None, description="Planned before anything exists; the peak fleet and quota.")
    production: ProductionState | None = Field(
        default=None, description="The production endpoint as the run left it.")
    outcome: Outcome | None = Field(
        default=None, description="The run in words: verdict, production, reasons, next steps.")
    calibration: PredictedVsMeasured | None = Field(
        default=None, description="The benchmark next to the latency model's prediction, per "
        "level, and the records kept to calibrate it.")
    component: ComponentPlan | None = Field(
        default=None, description="target.mode inference_component: the model's component "
        "(resources per copy, copies and their scaling, managed instances), the packing of "
        "every component on the endpoint, and the cold start this run measured.")
    autoscaling: ScalingPlan | None = Field(
        default=None, description="How production scales after promotion: instance range, "
        "target concurrent requests per copy and per instance, cooldowns, and why.")
    autoscaling_applied: list[str] | None = Field(
        default=None, description="What the autoscale step set up on the target.")

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON types, in report.json's key order (the one dump of a run)."""
        return self.model_dump(mode="json")


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema of report.json (what `to_json_dict` writes)."""
    schema = RunReport.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def shipped_schema_text() -> str:
    """The schema file that ships with the package (a test keeps it equal to the model's)."""
    return files("lmiflow.report").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


if __name__ == "__main__":  # regenerate the shipped file: python -m lmiflow.report.model
    from pathlib import Path

    Path(__file__).with_name(SCHEMA_FILE).write_text(schema_text(report_json_schema()),
                                                      encoding="utf-8")
