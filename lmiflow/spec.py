"""The deployment config: one typed model for the YAML file, the CLI and the Prefect UI form.

Unknown keys are errors everywhere (extra="forbid"): a misspelt option must not be ignored.
Values are strict (`true` is not the number 1, "8" is not 8) and floats finite (a NaN
threshold compares false with everything, so a gate on it could never pass or fail honestly).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from lmiflow import limits, patterns
from lmiflow.bench.gate_spec import GateSpec
from lmiflow.errors import UserInputError
from lmiflow.redact import looks_secret, registered_in
from lmiflow.regions import partition_of
from lmiflow.secrets import SecretRef
from lmiflow.serving.properties import check_key, check_value, fmt
from lmiflow.targets.blue_green import traffic_shift_error
from lmiflow.targets.components_plan import InferenceComponentSection

# A model-level validator's message that starts with the field it is about.
FIELD_FIRST_RE = re.compile(r"(target|instance|promotion)\.[a-z_]+ ")
# Leave room for the suffixes lmiflow adds to candidate resources (-c-<hash>, -m-<hash>).
MAX_ENDPOINT_NAME = 40

DType = Literal["auto", "fp32", "fp16", "bf16", "fp8", "int8", "int4"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ModelSection(_Strict):
    id: str = Field(
        description="Hugging Face model id (org/name), an s3://bucket/prefix/ holding the model "
        "files, or a local directory holding config.json."
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag, commit).")
    weights: Literal["auto", "stage", "hub"] = Field(
        default="auto",
        description="How a SageMaker container gets the weights. stage: copied into target.s3_uri "
        "from the machine that runs the flow (no token reaches SageMaker); hub: the container "
        "downloads them; auto: hub for public models, stage for gated, private and local ones "
        "(an s3:// model is always loaded from its own prefix).",
    )
    hf_token_secret: str | None = Field(
        default=None,
        description="Prefect Secret block holding the Hub token for gated or private models; "
        "empty: the HF_TOKEN environment variable of the machine that runs the flow.",
    )
    token_to_container: bool = Field(
        default=False,
        description="Opt-in: pass the runner's Hub token to the container as HF_TOKEN so it "
        "downloads a gated or private model itself. The token is then readable by anyone "
        "allowed sagemaker:DescribeModel.",
    )
    dtype: DType = Field(
        default="auto",
        description="Weights dtype; auto reads torch_dtype / quantization_config from config.json.",
    )
    kv_cache_dtype: DType = Field(
        default="auto", description="KV-cache dtype; auto follows the weights dtype (fp16/bf16)."
    )
    trust_remote_code: bool = Field(
        default=False, description="Run the model repository's own code. Off unless you trust it."
    )

    @field_validator("id", "revision", "hf_token_secret")
    @classmethod
    def _no_control_chars(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or patterns.has_control(v)):
            raise ValueError("must be non-empty and hold no line breaks or control characters")
        return v

    @field_validator("id")
    @classmethod
    def _s3_prefix(cls, v: str) -> str:
        if v.startswith("s3://"):
            if not patterns.matches(patterns.S3_URI, v):
                raise ValueError("an s3:// model id must look like s3://bucket/prefix/")
            if not v.endswith("/"):
                v += "/"
        return v


class WorkloadSection(_Strict):
    max_input_tokens: int = Field(gt=0, le=limits.MAX_INPUT_TOKENS,
                                  description="Longest prompt, in tokens.")
    max_output_tokens: int = Field(gt=0, le=limits.MAX_OUTPUT_TOKENS,
                                   description="Longest answer, in tokens.")
    concurrency: int = Field(gt=0, le=limits.MAX_CONCURRENCY,
                             description="Requests served at the same time.")


class InstanceSection(_Strict):
    allow: list[str] = Field(
        default_factory=list,
        description="Instance type globs to consider (e.g. ml.g5.*); empty means all.",
    )
    instance_type: str | None = Field(default=None, description="Force this instance type.")
    tensor_parallel_degree: Literal[1, 2, 4, 8] | None = Field(
        default=None, description="Force this tensor-parallel degree (shards)."
    )
    max_usd_per_hour: float | None = Field(default=None, gt=0, description="Price ceiling.")
    count: int = Field(default=1, ge=1, le=limits.MAX_INSTANCES,
                       description="Instances behind the endpoint.")
    max_count: int | None = Field(
        default=None, ge=1, le=limits.MAX_INSTANCES,
        description="Scale out up to this many instances when memory or the latency gates "
        "need more copies, or several small instances cost less; empty: count.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0.1, le=1.0, description="Fraction of GPU memory the engine may use."
    )
    inference_ami_version: str | None = Field(
        default=None,
        description="SageMaker host AMI (NVIDIA driver); empty: the one the image's CUDA needs.",
    )
    routing_strategy: Literal["LEAST_OUTSTANDING_REQUESTS", "RANDOM"] = Field(
        default="LEAST_OUTSTANDING_REQUESTS",
        description="How SageMaker spreads requests over the endpoint's instances.",
    )

    @field_validator("inference_ami_version")
    @classmethod
    def _ami(cls, v: str | None) -> str | None:
        if v is not None:
            import botocore.session

            names = botocore.session.get_session().get_service_model("sagemaker").shape_for(
                "ProductionVariantInferenceAmiVersion").enum
            if v not in names:
                raise ValueError(f"{v!r} is not one of botocore's {', '.join(names)}")
        return v

    @field_validator("max_count")
    @classmethod
    def _max_count(cls, v: int | None, info) -> int | None:
        count = info.data.get("count", 1)
        if v is not None and v < count:
            raise ValueError(f"{v} is below count {count}")
        return v


class ServingSection(_Strict):
    backend: Literal["vllm", "trtllm"] = Field(
        default="vllm", description="LMI backend: vLLM (default) or TensorRT-LLM."
    )
    image_version: str | None = Field(
        default=None, description="LMI (djl-lmi) image version, e.g. 0.33.0; empty: SDK's latest."
    )
    image_uri: str | None = Field(default=None, description="Use this image URI as is.")
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra serving.properties entries, e.g. option.enable_prefix_caching: true",
    )
    secret_options: dict[str, SecretRef] = Field(
        default_factory=dict,
        description="serving.properties entries that hold a secret, e.g. option.hf_token: "
        "{secret_block: hf-token} (a Prefect Secret block), {env: HF_TOKEN}, or the value "
        "(kept only when the config file is read by the run itself). Masked in every output; "
        "staged in a file only its owner can read.",
    )

    @field_validator("options", "secret_options")
    @classmethod
    def _well_formed(cls, v: dict) -> dict:
        # Checked here, not only when serving.properties is rendered: rendering comes after
        # planning, so a malformed key would otherwise be reported as whatever the plan hit
        # first (on the local target, the RAM free at that moment), or not at all.
        for key, value in v.items():
            check_key(key)
            if not isinstance(value, SecretRef):
                check_value(key, fmt(value))
        return v

    @model_validator(mode="after")
    def _secrets_in_their_home(self) -> ServingSection:
        for key, value in self.options.items():
            if looks_secret(key, value):
                raise UserInputError(
                    f"options.{key}", "looks like a secret: move it to serving.secret_options "
                    "(a Prefect Secret block name, an environment variable or the value)")
        both = sorted(set(self.options) & set(self.secret_options))
        if both:
            raise UserInputError(f"secret_options.{both[0]}", "also set in serving.options")
        return self

    @field_validator("image_uri")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > patterns.IMAGE_URI_MAX
                              or not patterns.matches(patterns.IMAGE_URI, v)):
            raise ValueError("must be an image reference REGISTRY/REPOSITORY[:TAG][@sha256:...] "
                             f"of at most {patterns.IMAGE_URI_MAX} characters")
        return v


class VpcSection(_Strict):
    subnets: list[str] = Field(min_length=1, max_length=16, description="Subnet ids, subnet-...")
    security_group_ids: list[str] = Field(
        min_length=1, max_length=5, description="Security group ids, sg-...")

    @field_validator("subnets")
    @classmethod
    def _subnets(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not patterns.matches(patterns.SUBNET_ID, s)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a subnet id such as subnet-0123456789abcdef0")
        return v

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not patterns.matches(patterns.SECURITY_GROUP_ID, s)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a security group id such as sg-0123456789abcdef0")
        return v


class TargetSection(_Strict):
    kind: Literal["local", "sagemaker"] = Field(
        default="local", description="Where the endpoint runs: this machine or SageMaker."
    )
    region: str | None = Field(default=None, description="AWS region (sagemaker).")
    role_arn: str | None = Field(default=None, description="SageMaker execution role ARN.")
    s3_uri: str | None = Field(
        default=None, description="S3 prefix for model files (serving.properties), s3://bucket/p/."
    )
    aws_credentials_block: str | None = Field(
        default=None, description="prefect-aws AwsCredentials block name; empty: default chain."
    )
    packaging: Literal["s3", "env"] = Field(
        default="s3",
        description="s3: upload serving.properties to s3_uri; env: pass options as OPTION_* env "
        "(always env when the weights come from S3: their prefix is shared by every config).",
    )
    network_isolation: bool | None = Field(
        default=None,
        description="Run the container without network access (EnableNetworkIsolation). Empty: "
        "on when the weights come from S3 (staged or an s3:// model), off when the container "
        "downloads them from the Hub.",
    )
    vpc: VpcSection | None = Field(
        default=None, description="Run the container in your VPC (VpcConfig): subnets and "
        "security groups.")
    mode: Literal["endpoint", "inference_component"] = Field(
        default="endpoint",
        description="endpoint: the model is the endpoint's variant. inference_component: the "
        "endpoint's instances are managed by SageMaker and the model is an inference component "
        "on them (its own accelerators, memory and copies; several models may share the "
        "endpoint); see the inference_component section.")

    @field_validator("region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is not None and partition_of(v) is None:
            raise ValueError(f"{v!r} is not an AWS region name such as us-east-1 (no partition "
                             "in botocore's partitions.json matches it)")
        return v

    @field_validator("role_arn")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        if v is not None and not patterns.matches(patterns.ROLE_ARN, v):
            raise ValueError("must look like arn:aws:iam::123456789012:role/NAME")
        return v

    @field_validator("s3_uri")
    @classmethod
    def _s3(cls, v: str | None) -> str | None:
        if v is not None:
            if not patterns.matches(patterns.S3_URI, v):
                raise ValueError("must look like s3://bucket/prefix/")
            if not v.endswith("/"):
                v += "/"
        return v


class SmokeTestSection(_Strict):
    prompt: str = Field(default="What is Amazon SageMaker?", description="Prompt to send.")
    max_new_tokens: int = Field(default=16, ge=1, le=4096,
                                description="Tokens the smoke test asks for.")


class BenchmarkSection(_Strict):
    concurrency: list[StrictInt] = Field(
        default_factory=lambda: [1, 4],
        description="Closed-loop concurrency levels to sweep (empty: only the rates).",
    )
    rates: list[StrictFloat] = Field(
        default_factory=list,
        description="Open-loop levels: Poisson arrival rates in requests/s, run after the "
        "concurrency levels; goodput and saturation are reported per rate.",
    )
    max_in_flight: int = Field(
        default=256, strict=True, ge=1, le=4096, description="Open loop: most requests in flight."
    )
    duration_s: float | None = Field(
        default=None, strict=True, gt=0, le=3600, allow_inf_nan=False,
        description="Open loop: stop sending arrivals after this many seconds.",
    )
    requests: int = Field(
        default=16, strict=True, ge=1, le=100_000, description="Measured requests per level."
    )
    warmup_requests: int = Field(
        default=2, strict=True, ge=0, le=1000, description="Excluded from metrics."
    )
    repeats: int = Field(
        default=1, strict=True, ge=1, le=20,
        description="Measure every level this many times (interleaved): the regression gate "
        "then compares with a confidence interval instead of one noisy run.",
    )
    input_tokens: int | None = Field(
        default=None, strict=True, ge=1, le=2_000_000,
        description="Prompt length in the model's tokens; empty: a quarter of max_input_tokens.",
    )
    max_new_tokens: int | None = Field(
        default=None, strict=True, ge=1, le=1_000_000,
        description="Output length; empty: min(max_output_tokens, 64).",
    )
    api: Literal["inputs", "messages"] = Field(
        default="inputs", description="Request form: LMI's inputs, or chat messages."
    )
    prompts: str | None = Field(
        default=None,
        description="A JSONL file of prompts to replay (a string, {prompt} or {messages} "
        "per line) instead of synthetic ones of input_tokens.",
    )
    fixed_length: bool = Field(
        default=True,
        description="Greedy, seeded, and every output exactly max_new_tokens long (ignore "
        "EOS): runs comparable between candidate and production.",
    )
    seed: int = Field(
        default=0, strict=True, ge=0, le=2**31 - 1, description="Prompt and sampling seed."
    )
    timeout_s: float = Field(
        default=120, strict=True, gt=0, le=3600, description="Per-request timeout."
    )

    @field_validator("concurrency")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if any(c < 1 or c > 4096 for c in v):
            raise ValueError("each level must be an integer between 1 and 4096")
        return sorted(set(v))

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if any(not (0 < r <= 10_000) for r in v):  # NaN fails too
            raise ValueError("each rate must be between 0 and 10000 requests/s")
        return sorted(set(v))

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"{v} is not a file")
        return v

    @model_validator(mode="after")
    def _some_level(self) -> BenchmarkSection:
        if not self.concurrency and not self.rates:
            raise ValueError("benchmark.concurrency: give concurrency levels or rates")
        return self


class RegressionSection(_Strict):
    max_regression_pct: float | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="Reject when the candidate is confidently worse than production's last "
        "promoted benchmark by more than this percent: p50 TTFT or p50 TPOT above (1 + pct/100)"
        " x production's, or tokens/s below production's / (1 + pct/100), so no bound reaches "
        "zero. Empty: off.",
    )
    confidence: float = Field(
        default=0.95, strict=True, ge=0.5, le=0.999, allow_inf_nan=False,
        description="Confidence of the interval the comparison uses (benchmark.repeats).",
    )
    compare_with: Literal["last_promoted", "production_now"] = Field(
        default="last_promoted",
        description="last_promoted: production's benchmark saved when it was promoted. "
        "production_now: benchmark production too, in the same run, level by level beside the "
        "candidate (a shared or busy machine then weighs on both alike; it sends benchmark "
        "traffic to production).",
    )
    noise_floor_pct: float = Field(
        default=0.0, strict=True, ge=0, le=1000, allow_inf_nan=False,
        description="Run-to-run noise to allow for on top of the interval, in percent (e.g. "
        "what production's own repeats spread over).",
    )


class PromotionSection(_Strict):
    strategy: Literal["ALL_AT_ONCE", "CANARY", "LINEAR"] = Field(
        default="ALL_AT_ONCE", description="Blue/green traffic shifting on SageMaker."
    )
    canary_size_pct: int = Field(
        default=10, ge=1, le=50,
        description="CANARY: share of the fleet that gets the new config first (percent).")
    linear_step_pct: int = Field(
        default=20, ge=10, le=50,
        description="LINEAR: share of the fleet moved to the new config per step (percent).")
    wait_interval_s: int = Field(
        default=300, ge=0, le=3600,
        description="CANARY/LINEAR: seconds each step bakes (alarms watched) before the next.")
    alarms: list[str] = Field(
        default_factory=list, max_length=10,
        description="CloudWatch alarms that roll the update back (they must exist).",
    )
    termination_wait_s: int = Field(
        default=0, ge=0, le=3600,
        description="Blue fleet kept after all traffic moved (a last chance to roll back).",
    )
    endpoint_timeout_s: float = Field(
        default=3600, gt=0, le=4 * 3600, description="Longest wait for an endpoint to be ready."
    )
    lease_ttl_s: int = Field(
        default=600, ge=60, le=3600,
        description="SageMaker: the run's lease on the endpoint expires this long after its "
        "last renewal (renewed every third of it), so a killed run blocks no one for longer.",
    )
    replace_failed: bool = Field(
        default=False,
        description="Replace a production endpoint that is Failed (it serves nothing and "
        "cannot be updated): promotion deletes it and creates it on the candidate's config, "
        "and the regression check is not enforced. Off: such a run stops before creating "
        "anything.",
    )


class AutoscalingSection(_Strict):
    """Target tracking on concurrent requests, sized by the plan (sizing.autoscaling)."""

    min: int = Field(default=1, ge=1, le=100,
                     description="Fewest instances (local: server processes) the endpoint "
                     "scales in to.")
    max: int = Field(ge=1, le=100, description="Most instances it scales out to.")
    target: Literal["auto"] | Annotated[int, Field(ge=1, le=100_000)] = Field(
        default="auto",
        description="Concurrent requests per model copy to keep the average at; auto: the "
        "most a copy holds within memory and the latency gates, less headroom_pct.")
    headroom_pct: float | None = Field(
        default=None, ge=0, lt=100,
        description="target auto: percent below the plan's per-copy ceiling (default 20).")
    scale_in_cooldown_s: int = Field(
        default=300, ge=0, le=86_400,
        description="Seconds after a scaling activity before instances are removed.")
    scale_out_cooldown_s: int = Field(
        default=300, ge=0, le=86_400,
        description="Seconds after a scale-out before the next scale-out.")

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, v: object) -> object:
        if v == "auto" or (type(v) is int and 1 <= v <= 100_000):
            return v
        raise ValueError("must be auto or a whole number of concurrent requests per model "
                         "copy, 1 to 100000")

    @model_validator(mode="after")
    def _range(self) -> AutoscalingSection:
        if self.min > self.max:
            raise UserInputError("min", f"{self.min} is above max {self.max}")
        if self.headroom_pct is not None and self.target != "auto":
            raise UserInputError("headroom_pct", "applies to target auto only (target is "
                                                 f"{self.target})")
        return self


class DeploymentSpec(_Strict):
    """A deployment: which model, for which workload, where, and what it must prove."""

    name: str = Field(description="Production endpoint name (SageMaker's name rule).")
    model: ModelSection = Field(description="The model: Hub id or directory, revision, dtype.")
    workload: WorkloadSection = Field(
        description="What it must serve: prompt and output lengths, concurrent requests.")
    instance: InstanceSection = Field(
        default_factory=InstanceSection,
        description="Which instances the planner may choose from, and how many.")
    serving: ServingSection = Field(
        default_factory=ServingSection,
        description="The LMI engine, image version and extra serving.properties options.")
    target: TargetSection = Field(
        default_factory=TargetSection,
        description="Where the endpoint lives: local (this machine) or SageMaker.")
    smoke_test: SmokeTestSection = Field(
        default_factory=SmokeTestSection,
        description="One request each new endpoint must answer before it is benchmarked.")
    benchmark: BenchmarkSection = Field(
        default_factory=BenchmarkSection,
        description="The load the candidate is measured under, per concurrency level.")
    gates: list[GateSpec] = Field(default_factory=list, description="Benchmark checks to pass.")
    regression: RegressionSection = Field(
        default_factory=RegressionSection,
        description="How much worse than production the candidate may be.")
    promotion: PromotionSection = Field(
        default_factory=PromotionSection,
        description="How production is updated when the candidate passes.")
    inference_component: InferenceComponentSection = Field(
        default_factory=InferenceComponentSection,
        description="target.mode inference_component: the component's copies, their scaling "
        "and the endpoint's managed instance scaling.")
    autoscaling: AutoscalingSection | None = Field(
        default=None,
        description="Scale production with its concurrent requests after promotion; empty: "
        "a fixed instance count.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not patterns.matches(patterns.NAME, v):
            raise ValueError(f"must match {patterns.NAME.pattern} (SageMaker's rule)")
        if len(v) > MAX_ENDPOINT_NAME:
            raise ValueError(f"at most {MAX_ENDPOINT_NAME} characters (lmiflow adds suffixes)")
        return v

    @model_validator(mode="after")
    def _limits(self) -> DeploymentSpec:
        w, b = self.workload, self.benchmark
        limits.check_benchmark_fits(b.input_tokens, b.max_new_tokens, w.max_input_tokens,
                                    w.max_output_tokens)
        limits.check_gate_levels(self.gates, b.concurrency)
        limits.check_gates_agree(self.gates, b.concurrency)
        a, inst = self.autoscaling, self.instance
        if a is not None and inst.max_count is not None and a.max > inst.max_count:
            raise UserInputError("autoscaling.max", f"{a.max} is above instance.max_count "
                                                    f"{inst.max_count}")
        return self

    @model_validator(mode="after")
    def _no_credential_in_a_plain_field(self) -> DeploymentSpec:
        """A credential of this runner (HF_TOKEN, an AWS key, a secret option's value: what
        lmiflow.redact holds) in a plain field, whatever the field and the value's shape
        (a token as model.revision, a secret key as a serving option), would be printed by a
        dry run and stored with a flow run's parameters: refused, naming the field."""
        where = registered_in(self.model_dump(mode="json",
                                              exclude={"serving": {"secret_options"}}))
        if where is not None:
            raise UserInputError(where, "holds a credential of this runner (the value of "
                                 "HF_TOKEN, an AWS key or a secret option): it would be "
                                 "printed and stored; put it in serving.secret_options or "
                                 "the runner's environment, never in a plain field")
        return self

    @model_validator(mode="after")
    def _component_mode(self) -> DeploymentSpec:
        if self.target.mode == "inference_component" and self.target.kind != "sagemaker":
            raise ValueError("target.mode inference_component needs target.kind sagemaker (the "
                             f"{self.target.kind} target serves one model per endpoint)")
        if self.target.mode == "inference_component" and self.autoscaling is not None:
            raise UserInputError("autoscaling", "scales an endpoint's instances; in target.mode "
                                 "inference_component the component's copies scale "
                                 "(inference_component.min_copies / max_copies) and SageMaker "
                                 "manages the instances: remove this section")
        if self.target.mode == "inference_component" and self.promotion.strategy != "ALL_AT_ONCE":
            raise ValueError("promotion.strategy in target.mode inference_component is a "
                             "rolling update of the component, one copy at a time: leave it "
                             "ALL_AT_ONCE (CANARY and LINEAR shift an endpoint's traffic)")
        return self

    @model_validator(mode="after")
    def _sagemaker_needs(self) -> DeploymentSpec:
        if self.target.kind == "sagemaker":
            for field in ("region", "role_arn"):
                if getattr(self.target, field) is None:
                    raise ValueError(f"target.{field} is required for target.kind sagemaker")
            if self.target.packaging == "s3" and self.target.s3_uri is None:
                raise ValueError("target.s3_uri is required when target.packaging is s3")
            # the plan may scale out to max_count; it checks again with the count it chose
            shift = traffic_shift_error(self.promotion.strategy, self.promotion.canary_size_pct,
                                        self.promotion.linear_step_pct,
                                        self.instance.max_count or self.instance.count)
            if shift:
                raise ValueError(f"{shift[0]} {shift[1]}")
            partition = partition_of(self.target.region or "")
            if not (self.target.role_arn or "").startswith(f"arn:{partition}:"):
                raise ValueError(f"target.role_arn must be an arn:{partition}: role: region "
                                 f"{self.target.region} is in partition {partition}")
        return self


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _field_path(loc: tuple) -> str:
    """The dotted path of a field. A key the user wrote that is not a plain name (a line
    break, a control character, 100k characters) is quoted and cut, so the error stays one
    readable line."""
    def part(p: object) -> str:
        text = str(p)
        if _PLAIN_KEY.fullmatch(text):
            return text
        quoted = repr(text)
        return quoted if len(quoted) <= 40 else quoted[:37] + "..."

    return ".".join(part(p) for p in loc) or "config"


def format_validation_error(exc: ValidationError, prefix: str = "") -> UserInputError:
    """The first error, as one line that names the field: what the user fixes first."""
    err = exc.errors()[0]
    loc = tuple(err.get("loc", ()))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, UserInputError):  # a cross-field rule names its own field
        inner = _field_path(loc) if loc else ""
        return UserInputError(prefix + (f"{inner}." if inner else "") + cause.field,
                              cause.reason)
    msg = err.get("msg", "invalid")
    if isinstance(err.get("input"), bool) and err.get("type") in ("int_type", "float_type"):
        msg = f"must be a number, not the boolean {str(err['input']).lower()}"
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (not part of the config)"
    msg = msg.removeprefix("Value error, ")
    field = _field_path(loc)
    # model-level validators name their own field in the message ("section.field why").
    if not loc and FIELD_FIRST_RE.match(msg):
        field, _, msg = msg.partition(" ")
    elif msg.startswith("benchmark.") and ": " in msg.split(" ")[0] + " ":
        field, _, msg = msg.partition(": ")
    return UserInputError(prefix + field, msg)


def parse_spec(data: object, prefix: str = "") -> DeploymentSpec:
    if not isinstance(data, dict):
        raise UserInputError("config", "must be a YAML mapping of fields (got "
                             f"{type(data).__name__ if data is not None else 'an empty file'})")
    try:
        return DeploymentSpec.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, prefix) from None


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, first: int, second: int):
        self.key, self.first, self.second = key, first, second
        super().__init__(f"duplicate key {key}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently, so `gates:` written twice would drop the first list)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise DuplicateKey(str(key), seen[key], line)
            if isinstance(key, str | int | float | bool):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | Path, overrides: dict | None = None) -> DeploymentSpec:
    """Read and validate a YAML config; overrides (e.g. --target) are merged on top."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError("CONFIG", f"{path} is not a file")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except DuplicateKey as exc:
        raise UserInputError(exc.key, f"appears twice in {path} (lines {exc.first} and "
                                      f"{exc.second}); which one is meant?") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserInputError("CONFIG", f"{path} is not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise UserInputError("CONFIG", f"{path} is not UTF-8 text") from None
    if isinstance(data, dict) and overrides:
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise UserInputError(dotted, "cannot override: parent is not a mapping")
            node[leaf] = value
    return parse_spec(data)
