"""The one interface both targets implement: where an endpoint lives (SageMaker or this machine).

Names follow SageMaker's API so the flow reads the same for both targets. Every method that
creates something is idempotent on its name where the platform allows it, so a rerun after an
interruption can adopt or remove what the earlier run left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

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
    url: str | None = Field(default=None, description="The /invocations URL, where one exists.")
    tags: dict[str, str] = Field(default_factory=dict)


class EndpointVariant(BaseModel):
    """What an endpoint config holds: one production variant."""

    instance_type: str
    instance_count: int = 1
    volume_size_gb: int | None = None
    model_data_download_timeout_s: int | None = None
    container_startup_health_check_timeout_s: int | None = None


class TrafficPolicy(BaseModel):
    """Blue/green update policy (SageMaker's BlueGreenUpdatePolicy; local: ALL_AT_ONCE)."""

    type: Literal["ALL_AT_ONCE", "CANARY", "LINEAR"] = "ALL_AT_ONCE"
    wait_interval_s: int = 0
    canary_size_pct: int | None = None
    linear_step_pct: int | None = None
    termination_wait_s: int = 0
    alarms: list[str] = Field(default_factory=list)


class WaitTimeout(TimeoutError):
    """The endpoint did not reach a terminal status in time."""


@runtime_checkable
class Target(Protocol):
    kind: str

    def stage(self, name: str, files: dict[str, str]) -> str:
        """Put the model files (name -> text; serving.properties at least) where the serving
        container reads them; returns their location (s3:// prefix ending in / or a dir)."""

    def create_model(
        self, name: str, model_data: str, image_uri: str | None, env: dict[str, str],
        tags: dict[str, str],
    ) -> None: ...

    def create_endpoint_config(
        self, name: str, model_name: str, variant: EndpointVariant, tags: dict[str, str]
    ) -> None: ...

    def create_endpoint(self, name: str, config_name: str, tags: dict[str, str]) -> None: ...

    def update_endpoint(
        self, name: str, config_name: str, policy: TrafficPolicy | None = None
    ) -> None: ...

    def wait(
        self, name: str, timeout_s: float,
        on_status: Callable[[EndpointStatus, float], None] | None = None,
    ) -> EndpointStatus:
        """Poll until a terminal status; on_status(status, elapsed_s) on each change.
        Raises WaitTimeout when timeout_s passes first."""

    def describe(self, name: str) -> EndpointStatus | None:
        """None when the endpoint does not exist."""

    def invoke(self, name: str, payload: dict) -> bytes: ...

    def invoke_stream(self, name: str, payload: dict) -> Iterator[bytes]:
        """Whole JSON lines (without the newline), reassembled across transport chunks."""

    def reserve_invocations(self, concurrency: int) -> None:
        """Be ready for this many invocations at once (a benchmark level): connection pools
        that hold them all, so no request waits for a connection inside its latency."""

    def model_files(self, endpoint: str, dest: Path, names: Sequence[str]) -> Path | None:
        """A local directory holding the serving.properties the endpoint serves and those of
        `names` (tokenizer and config files) that sit beside its weights where this target can
        read them (a local directory, the model's S3 prefix, an s3:// option.model_id). The
        local target answers with its staged directory; others copy into dest. None when the
        endpoint does not exist."""

    def delete_endpoint(self, name: str) -> bool: ...

    def delete_endpoint_config(self, name: str) -> bool: ...

    def delete_model(self, name: str) -> bool:
        """Each delete returns False when there was nothing to delete (never raises for that)."""

    def list_endpoints(self) -> list[EndpointStatus]: ...

    def list_resources(self, prefix: str) -> dict[str, list[str]]:
        """Names of models, endpoint configs and endpoints starting with prefix: lets a rerun
        find what an interrupted run left, and lets tests compare before and after."""
