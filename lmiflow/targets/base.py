"""The one interface both targets implement: where an endpoint lives (SageMaker or this machine).

Names follow SageMaker's API so the flow reads the same for both targets. Every method that
creates something is idempotent on its name where the platform allows it, so a rerun after an
interruption can adopt or remove what the earlier run left. Everything that differs between
the targets (packaging, timeouts, the catalog to plan over, the image, the baseline and
calibration stores)
is a method here, so no caller needs to know which target it holds.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, Field

from lmiflow import patterns
from lmiflow.sizing.autoscaling import ScalingPlan
from lmiflow.targets.components_plan import ComponentPlan
from lmiflow.targets.weights import WeightsPlan

if TYPE_CHECKING:
    import pandas as pd
    from pydantic import SecretStr

    from lmiflow.sizing.packing import ComponentNeed
    from lmiflow.targets.aws_requests import AwsRequest
    from lmiflow.targets.components_plan import InferenceComponentSection
    from lmiflow.targets.staging import Progress, StagingReport
    from lmiflow.targets.weights import ModelSource

# SageMaker's rule for model, endpoint-config and endpoint names; the local target keeps it so
# a config that deploys locally deploys on SageMaker too. Matched in full (lmiflow.patterns).
NAME_RE = patterns.NAME
# A candidate's resources: <production>-c-<hash> (endpoint), -ec- (config), -m- (model).
CANDIDATE_RE = r"{name}-(c|ec|m)-[0-9a-f]{{8}}"

Status = Literal[
    "Creating",
    "Updating",
    "SystemUpdating",
    "RollingBack",
    "InService",
    "Deleting",
    "Failed",
    "OutOfService",
    "UpdateRollbackFailed",
]
TERMINAL_STATUSES = ("InService", "Failed", "OutOfService", "UpdateRollbackFailed")


class EndpointStatus(BaseModel):
    name: str
    status: Status
    failure_reason: str | None = None
    config_name: str | None = None
    pending_config_name: str | None = Field(
        default=None, description="The config an update in progress is moving to: in use too, "
        "so a run interrupted mid-promotion must not delete it.")
    url: str | None = Field(default=None, description="The /invocations URL, where one exists.")
    tags: dict[str, str] = Field(default_factory=dict)
    since: dt.datetime | None = Field(
        default=None, description="When the endpoint last changed (created, or switched to the "
                                  "config it serves), UTC: 'serving X since T'.")


class EndpointVariant(BaseModel):
    """What an endpoint config holds: one production variant."""

    instance_type: str
    instance_count: int = 1
    volume_size_gb: int | None = None
    model_data_download_timeout_s: int | None = None
    container_startup_health_check_timeout_s: int | None = None
    inference_ami_version: str | None = Field(
        default=None, description="Host AMI (and so NVIDIA driver); None: the fleet default.")
    routing_strategy: Literal["LEAST_OUTSTANDING_REQUESTS", "RANDOM"] | None = Field(
        default="LEAST_OUTSTANDING_REQUESTS",
        description="How the endpoint spreads requests over instances; None: the platform's.")


class ModelFiles(BaseModel):
    """What Target.model_files found of an endpoint's model (for a benchmark: its tokenizer
    and max_model_len)."""

    directory: Path
    properties: dict[str, str] = Field(default_factory=dict, description="serving.properties")


class TrafficPolicy(BaseModel):
    """Blue/green update policy (SageMaker's BlueGreenUpdatePolicy; local: ALL_AT_ONCE)."""

    type: Literal["ALL_AT_ONCE", "CANARY", "LINEAR"] = "ALL_AT_ONCE"
    wait_interval_s: int = 0
    canary_size_pct: int | None = None
    linear_step_pct: int | None = None
    termination_wait_s: int = 0
    alarms: list[str] = Field(default_factory=list)


class ModelPackage(BaseModel):
    """Where a model's serving settings went: a location holding serving.properties, or (env
    packaging) no files and the settings as container environment variables."""

    model_data: str = ""
    env: dict[str, str] = Field(default_factory=dict)


class StoredReport(BaseModel):
    """Where a target keeps a run's report files, for people and for links."""

    location: str = Field(description="s3://... or a path.")
    url: str | None = Field(default=None, description="A link a browser opens, where one exists.")


class PlannedRun(BaseModel):
    """What the pipeline decided for one deploy before anything is created: enough for a
    target to list the requests the run will send."""

    production: str
    endpoint: str
    endpoint_config: str
    model: str
    properties: str
    image_uri: str | None
    variant: EndpointVariant
    tags: dict[str, str]
    weights: WeightsPlan
    policy: TrafficPolicy
    smoke_payload: dict
    bench_payload: dict
    bench_requests: int = Field(
        description="the probe, warm-up and measured requests over all levels and repeats")
    endpoint_timeout_s: float
    tokenizer_files: tuple[str, ...] = Field(
        default=(), description="the files the benchmark reads from the candidate's model when "
        "the runner has no copy of its tokenizer")
    component: ComponentPlan | None = Field(
        default=None, description="The model as an inference component (None: the model is "
        "the endpoint's variant).")
    autoscaling: ScalingPlan | None = None


class StoreOffline(RuntimeError):
    """The store is kept by a service, and this run may not call one (a dry run)."""


class WaitTimeout(TimeoutError):
    """The endpoint did not reach a terminal status in time."""


class EndpointBusy(RuntimeError):
    """The endpoint is being created, updated or deleted: another run may own it."""


class EndpointLock(AbstractContextManager):
    """Held for a whole deploy of one endpoint (this base holds nothing). A lock that can be
    lost while held (a lease that expired and was taken over) says so in assert_held(), which
    a run calls before it changes production."""

    def __exit__(self, *exc: object) -> None:
        return None

    def assert_held(self) -> None:
        """Raise when this run no longer holds the lock."""


def check_name(what: str, name: str) -> None:
    if not patterns.matches(NAME_RE, name):
        raise ValueError(f"{what} name {name!r} does not match {NAME_RE.pattern}")


class Target(ABC):
    """An endpoint platform. Subclasses implement the platform calls; wait() is shared."""

    kind: ClassVar[str]
    poll_interval_s: float = 1.0
    _clock: Callable[[], float] = staticmethod(time.monotonic)
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    # ---- planning: no side effects ------------------------------------------------------

    @abstractmethod
    def instance_catalog(self) -> pd.DataFrame:
        """The instances to plan over (sizing.catalog's frame)."""

    @abstractmethod
    def serving_model_id(self, model_id: str, local_dir: str | None) -> str:
        """What option.model_id names. local_dir is set when the config named a directory."""

    @abstractmethod
    def image_uri(self, backend: str, version: str | None, override: str | None) -> str | None:
        """The serving image for an LMI backend and version (None: the target runs no image)."""

    @abstractmethod
    def serving_engine(self, backend: str) -> str:
        """The engine whose speed the latency model predicts for the config's LMI backend."""

    @abstractmethod
    def endpoint_variant(self, instance_type: str, instance_count: int,
                         weights_bytes: int) -> EndpointVariant:
        """The endpoint config's variant for a model of this size (timeouts, volume)."""

    def component_plan(self, section: InferenceComponentSection, endpoint: str, option: object,
                       weights_bytes: float, variant: EndpointVariant, gated: bool,
                       alarms: list[str], others: Sequence[ComponentNeed] = (),
                       concurrency: int | None = None) -> ComponentPlan | None:
        """The model as an inference component on `endpoint`, packed with `others`, where this
        target is set to run models as components; None (this default): the model is the
        endpoint's own variant. option: the plan's chosen sizing.planner.Option; concurrency:
        the workload's, shared by the copies (each copy's batch)."""
        return None

    def component_need(self, section: InferenceComponentSection, endpoint: str,
                       option: object, weights_bytes: float) -> ComponentNeed | None:
        """What one copy of this model reserves on a shared endpoint (None: the target does
        not run models as components)."""
        return None

    def check_properties(self, text: str) -> None:
        """Refuse a serving.properties the target's server would refuse at start-up (an
        OptionError naming the key), so it is exit 2 before any endpoint exists. The LMI
        container documents no hard caps beyond what the plan's memory check bounds."""
        return None

    def check_state(self) -> None:
        """Before anything is created: the target's own state on this machine can be read
        and written (StateError naming the path otherwise). Nothing to check by default."""
        return None

    @staticmethod
    def resource_names(production: str, spec_hash: str) -> dict[str, str]:
        """A candidate's endpoint, endpoint config and model names: deterministic from the
        production endpoint's name and the hash of what is deployed, so a rerun of the same
        spec finds what an interrupted run made."""
        check_name("endpoint", production)
        h = spec_hash.lower()[:8]
        if len(h) < 8 or not h.isalnum():
            raise ValueError("spec_hash: at least 8 letters or digits")
        out = {}
        for kind, tag in (("endpoint", "c"), ("endpoint_config", "ec"), ("model", "m")):
            suffix = f"-{tag}-{h}"
            out[kind] = production[: 63 - len(suffix)].rstrip("-") + suffix
        return out

    @staticmethod
    def is_candidate_resource(production: str, name: str) -> bool:
        return re.fullmatch(CANDIDATE_RE.format(name=re.escape(production)), name) is not None

    # ---- before anything is created -----------------------------------------------------

    def preflight(self, needs: Sequence[tuple[str, str]] = ()) -> list[str]:
        """Can this target be used as configured (credentials, region, and permission for
        `needs`: (action, resource) pairs)? Returns notes for the log; raises
        errors.UserInputError naming each failed check, one line each. Nothing to check by
        default: a target that needs no account has nothing to be refused."""
        return []

    def store_report(self, endpoint: str, run: str, files: dict[str, bytes]
                     ) -> StoredReport | None:
        """Keep the report files (name -> bytes) where people of this target look for them;
        None when the files written on this machine are where they belong."""
        return None

    def access_needs(self, requests: Sequence[AwsRequest]) -> list[tuple]:
        """What preflight asks the platform to confirm for a run that sends `requests`:
        (action, resource[, request context]) for each permission one of them needs (none
        where the platform has no permissions)."""
        return []

    # ---- packaging and creation ---------------------------------------------------------

    @abstractmethod
    def stage(self, name: str, files: dict[str, str]) -> str:
        """Put the model files (name -> text; serving.properties at least) where the serving
        container reads them; returns their location (s3:// prefix ending in / or a dir)."""

    def package(self, name: str, properties: str, weights: WeightsPlan | None = None
                ) -> ModelPackage:
        """Hand serving.properties to the container: staged as a file unless the target is
        configured otherwise (or the weights plan says where the model is)."""
        return ModelPackage(model_data=self.stage(name, {"serving.properties": properties}))

    # ---- model weights ----------------------------------------------------------------------

    def read_s3_model(self, uri: str) -> tuple[ModelSource, dict, int | None]:
        """An s3:// model's files, config.json and exact parameter count (None: unknown)."""
        from lmiflow.errors import UserInputError

        raise UserInputError("model.id", f"an s3:// model needs target.kind sagemaker "
                             f"({self.kind} serves a directory or a Hub id)")

    def stage_weights(self, weights: WeightsPlan, token: SecretStr | None,
                      on_progress: Callable[[Progress], None] | None = None
                      ) -> StagingReport | None:
        """Copy the weights where the container reads them, when the plan says so; None when
        there is nothing to copy (the server reads them where they are)."""
        return None

    # ---- what the run will ask of the platform ----------------------------------------------

    def iam_policies(self, requests: list[AwsRequest]) -> tuple[dict, dict] | None:
        """(the runner's policy, the execution role's) for these requests, where the platform
        has IAM."""
        return None

    @abstractmethod
    def create_model(
        self, name: str, model_data: str, image_uri: str | None, env: dict[str, str],
        tags: dict[str, str], *, network_isolation: bool = False,
    ) -> None:
        """network_isolation: the model server gets no network (the weights must already be
        where model_data or this machine holds them)."""

    @abstractmethod
    def create_endpoint_config(
        self, name: str, model_name: str, variant: EndpointVariant, tags: dict[str, str],
        component: ComponentPlan | None = None,
    ) -> None:
        """component: the model is an inference component (the config then holds no model
        and its instances are managed); None: the model is the variant's."""

    def place_component(self, endpoint: str, model: str, component: ComponentPlan | None,
                        tags: dict[str, str], timeout_s: float) -> None:
        """After the endpoint is InService: put the model on it as `component` and wait for
        its first copy. Nothing to do where the model is the endpoint's (component None)."""
        return None

    def promote_component(self, production: str, candidate_endpoint: str, endpoint_config: str,
                          model: str, component: ComponentPlan | None, tags: dict[str, str],
                          timeout_s: float, wait_interval_s: int = 0) -> str | None:
        """Promote the candidate as production's component (what was done, in words); None
        where the model is not a component: the caller promotes the endpoint itself."""
        return None

    def check_shared_endpoint(self, production: str, component: ComponentPlan | None) -> None:
        """Where the model joins an existing endpoint as a component, that endpoint's fixed
        settings (instance type, instance limits) must hold it: raises UserInputError naming
        the config field. Nothing to check by default (no component, or no shared endpoint)."""
        return None

    def starts_on_request(self, endpoint: str) -> bool:
        """True where promotion left `endpoint` with nothing running, to start on its next
        request (an inference component scaled to zero): invoking it would start it, so it is
        not smoke-tested. False by default."""
        return False

    def models_in_use(self, endpoint: str) -> set[str]:
        """Models the endpoint serves other than through its config's variant (its
        inference components'); none by default."""
        return set()

    @abstractmethod
    def create_endpoint(self, name: str, config_name: str, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def update_endpoint(
        self, name: str, config_name: str, policy: TrafficPolicy | None = None, *,
        autoscaled: bool = False,
    ) -> None:
        """Blue/green; raises EndpointBusy while the endpoint is being changed. autoscaled:
        the run scales production (apply_autoscaling after), so the update keeps the count
        production scaled to where the platform allows."""

    # ---- autoscaling (after promotion) ------------------------------------------------------

    def apply_autoscaling(self, endpoint: str, plan: ScalingPlan) -> list[str]:
        """Scale the endpoint with its concurrent requests per the plan (target tracking:
        min..max instances, target per instance, cooldowns); registering again updates it.
        Returns what was set up, in lines for the report."""
        raise NotImplementedError(f"the {self.kind} target does not autoscale")

    def remove_autoscaling(self, endpoint: str) -> bool:
        """Stop scaling the endpoint (its count stays as it is); False when it did not scale."""
        return False

    @abstractmethod
    def endpoint_lock(self, name: str, run_id: str | None = None) -> EndpointLock:
        """Held for a whole deploy of one endpoint, so two runs never interleave their steps;
        entering it raises EndpointBusy when another run holds it. run_id names the holder."""

    # ---- what a promotion needs of the platform (checked before anything is created) -----

    shifts_traffic: ClassVar[bool] = False
    """Whether promotion shifts traffic in steps (CANARY / LINEAR); else all at once."""

    def missing_alarms(self, names: list[str]) -> list[str]:
        """The rollback alarms among `names` that do not exist (none where the platform has
        no alarms: there is nothing to roll back on)."""
        return []

    def endpoint_quotas(self, instance_types: list[str]) -> dict[str, float | None]:
        """The account's limit on instances of each type behind endpoints (None: no limit
        known)."""
        return dict.fromkeys(instance_types)

    def production_fleet(self, name: str) -> dict[str, int]:
        """Instances per type the endpoint runs now ({} when it does not exist or runs on no
        counted instances)."""
        return {}

    # ---- status ---------------------------------------------------------------------------

    @abstractmethod
    def describe(self, name: str) -> EndpointStatus | None:
        """None when the endpoint does not exist."""

    def poll(self, name: str) -> EndpointStatus | None:
        """What wait() polls: describe(), or a cheaper call where the platform has one."""
        return self.describe(name)

    def wait(
        self, name: str, timeout_s: float,
        on_status: Callable[[EndpointStatus, float], None] | None = None,
    ) -> EndpointStatus:
        """Poll every poll_interval_s until a terminal status; on_status(status, elapsed_s) on
        each change. Raises WaitTimeout when timeout_s passes first. After an update with
        auto-rollback, InService may mean the old config: compare config_name."""
        start = self._clock()
        last: str | None = None
        while True:
            st = self.poll(name)
            elapsed = self._clock() - start
            if st is None:
                raise LookupError(f"endpoint {name} does not exist")
            if st.status != last:
                extra = f": {st.failure_reason}" if st.failure_reason else ""
                logging.getLogger(type(self).__module__).info(
                    "endpoint %s %s after %.0f s%s", name, st.status, elapsed, extra)
                last = st.status
                if on_status is not None:
                    on_status(st, elapsed)
            if st.status in TERMINAL_STATUSES:
                return st
            remaining = timeout_s - elapsed
            if remaining <= 0:
                raise WaitTimeout(f"endpoint {name} still {st.status} after {elapsed:.0f} s "
                                  f"(limit {timeout_s:.0f} s)")
            self._sleep(min(self.poll_interval_s, remaining))

    @abstractmethod
    def list_endpoints(self) -> list[EndpointStatus]: ...

    @abstractmethod
    def list_resources(self, prefix: str) -> dict[str, list[str]]:
        """Names of models, endpoint configs and endpoints starting with prefix: lets a rerun
        find what an interrupted run left, and lets tests compare before and after."""

    @abstractmethod
    def config_model_name(self, config_name: str) -> str | None:
        """The model an endpoint config serves (None when there is no such config)."""

    # ---- invocation -----------------------------------------------------------------------

    @abstractmethod
    def invoke(self, name: str, payload: dict, timeout_s: float | None = None) -> bytes:
        """The whole answer. timeout_s: the longest wait for the endpoint's next byte; a
        target that can bound it raises TimeoutError (SageMaker's runtime client bounds
        every read by its own read timeout)."""

    @abstractmethod
    def invoke_stream(self, name: str, payload: dict, timeout_s: float | None = None
                      ) -> Iterator[bytes]:
        """Whole JSON lines (without the newline), reassembled across transport chunks;
        timeout_s as for invoke."""

    def reserve_invocations(self, concurrency: int) -> None:  # noqa: B027 (a no-op default)
        """Be ready for this many invocations at once (a benchmark level): connection pools
        that hold them all, so no request waits for a connection inside its latency."""

    def model_files(self, endpoint: str, dest: Path, names: Sequence[str]) -> ModelFiles | None:
        """The serving.properties entries the endpoint serves, and a local directory holding
        those of `names` (tokenizer and config files) that sit beside its weights where this
        target can read them (a local directory, the model's S3 prefix, an s3:// model_id).
        The local target answers with its staged directory; others copy into dest. None when
        the endpoint does not exist or the target cannot read its files (this default)."""
        return None

    # ---- deletion -------------------------------------------------------------------------
    # Each delete returns False when there was nothing to delete (never raises for that).

    @abstractmethod
    def delete_endpoint(self, name: str) -> bool: ...

    @abstractmethod
    def delete_endpoint_config(self, name: str) -> bool: ...

    @abstractmethod
    def delete_model(self, name: str) -> bool: ...

    # ---- what the endpoint's deploys stored (endpoints delete) ------------------------------

    def resource_tags(self) -> dict[str, str]:
        """Tags a run puts on what it creates besides its own: where the target keeps the
        endpoint's lease and files, so that a later delete finds them. None by default."""
        return {}

    def adopt_store(self, endpoint: str) -> str | None:
        """Before a delete locks the endpoint: where its deploys keep their lease and files,
        as the endpoint records it (resource_tags), becomes this target's. Raises ValueError
        when that and the configured place disagree; returns a warning when neither is known.
        Nothing to do by default (one state dir holds everything)."""
        return None

    def delete_needs(self, endpoint: str) -> list[tuple]:
        """What deleting the endpoint (lifecycle.teardown, under its lock) asks of the
        platform, for preflight: none by default."""
        return []

    def delete_policy(self, endpoint: str) -> dict | None:
        """The IAM policy `endpoints delete` needs, where the platform has one; None."""
        return None

    def files_of(self, endpoint: str, models: Sequence[str]) -> list[str]:
        """Where the models read their files (asked before teardown deletes them, for
        remove_files). None by default."""
        return []

    def remove_files(self, endpoint: str, used: Sequence[str]) -> tuple[list[str], list[str]]:
        """After teardown: the files stored for the endpoint and its models (`used`: what
        files_of found) that nothing left uses. Returns (what was removed, what was kept and
        why). Nothing by default."""
        return [], []

    # ---- production's baseline ------------------------------------------------------------

    @abstractmethod
    def load_baseline(self, endpoint: str) -> dict | None:
        """Production's last promoted benchmark (bench --json), None when there is none."""

    @abstractmethod
    def save_baseline(self, endpoint: str, data: dict) -> str | None:
        """Keep it where the next run of this endpoint finds it; returns where (or None when
        the target has nowhere to keep it)."""

    # ---- the latency model's calibration store -------------------------------------------
    # One store per place runs share (this machine's state dir, the S3 prefix): its records
    # are per accelerator and engine, not per endpoint.

    @abstractmethod
    def calibration_uri(self) -> str | None:
        """Where the store is (a path, an s3:// URI), None when the target keeps none."""

    @abstractmethod
    def load_calibration(self, *, offline: bool = False) -> dict | None:
        """The calibration store (sizing.calibration.CalibrationStore as JSON), None when
        there is none yet. offline: a dry run, which calls no service; a store only a service
        holds raises StoreOffline then."""

    @abstractmethod
    def update_calibration(self, change: Callable[[dict | None], dict]) -> str | None:
        """Replace the store with change(the store as read), atomically with respect to other
        runs appending to it (change may be called again on a newer store); returns where the
        store is (None when the target has nowhere to keep one)."""
