"""A SageMakerTarget that records instead of sending: its twin on an in-memory account
(targets.fake_account), seeded for one branch of the lifecycle at a time. What the twin sends
is what the real target would send in that branch, request for request, because it is the
same class running the same lifecycle; only the session behind its clients differs.

Two things are not replayed: the bytes of the weights (staging a model of tens of GB through
a recording would take as long as staging it), so staging lists the requests s3transfer sends
per file (staging.planned_requests, checked against moto by tests/targets/test_staging.py);
and time, which a fake clock advances when the lifecycle sleeps between polls.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmiflow.targets.aws_requests import AwsRequest, split_s3
from lmiflow.targets.base import EndpointLock, EndpointVariant, PlannedRun
from lmiflow.targets.fake_account import (
    EARLIER_HASH,
    LEFTOVER_HASH,
    FakeAccount,
    RecordingSession,
    Scenario,
)
from lmiflow.targets.sagemaker import SageMakerTarget

if TYPE_CHECKING:
    from pydantic import SecretStr

    from lmiflow.targets.staging import Progress, StagingReport
    from lmiflow.targets.weights import WeightsPlan


class _Clock:
    """Time that passes only when the lifecycle sleeps: polls cost nothing to record."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.001)


class Recording:
    """The requests a SageMakerTarget's lifecycle sends, branch by branch."""

    def __init__(self, target: SageMakerTarget):
        from lmiflow.targets.iam import account_of

        self.target = target
        partition, account = account_of(target.role_arn or "arn:aws:iam::000000000000:role/x")
        self.account = FakeAccount(target.region, account or "000000000000", partition)
        self.session = RecordingSession(target.region, self.account)
        self.requests: list[AwsRequest] = []
        self.step: str | None = None
        self.when: str | None = None  # a condition the recorded run cannot show by itself
        self._lock = threading.Lock()

    def record(self, req: AwsRequest) -> None:
        with self._lock:  # the benchmark's requests come from many threads
            self.requests.append(req.model_copy(update={"step": self.step,
                                                        "when": self.when or req.when}))

    def take(self) -> list[AwsRequest]:
        out, self.requests = self.requests, []
        return out

    def twin(self, scenario: Scenario, run: PlannedRun, after: FakeAccount | None = None
             ) -> SageMakerTarget:
        """The target on a fresh account seeded for `scenario`; `after`: the account an
        earlier recorded run left (its S3 objects: baseline, calibration store, weights)."""
        t = self.target
        self.account = FakeAccount(t.region, self.account.account, self.account.partition,
                                   may_simulate=scenario.may_simulate)
        self.session.account = self.account
        if after is not None and scenario.stores:
            self.account.objects = dict(after.objects)
        _seed(self.account, scenario, run, t)
        clock = _Clock()
        twin = _RecordingTarget(
            t.region, t.role_arn, t.s3_uri, session=self.session,
            poll_interval_s=t.poll_interval_s, packaging=t.packaging, vpc=t.vpc,
            on_request=self.record, clock=clock, sleep=clock.sleep, lease_ttl_s=t.lease_ttl_s,
            mode=t.mode)
        twin.routes.update(t.routes)
        twin.recording_of = self
        return twin


def _seed(account: FakeAccount, scenario: Scenario, run: PlannedRun, target: SageMakerTarget
          ) -> None:
    """Production serving an earlier config of the same shape (in component mode, its
    component serving an earlier model; where the run scales production, a scalable target
    on another instance type, which an update must remove first); what an interrupted run
    leaves: its candidate's resources and its expired lease. Configs are built by the
    builders the target sends with, under earlier names."""
    from lmiflow.targets.autoscaling_plan import register_request
    from lmiflow.targets.components_plan import endpoint_config_request
    from lmiflow.targets.sagemaker_requests import (
        VARIANT_NAME,
        create_endpoint_config_request,
        lease_key,
    )

    def config(name: str, model: str, variant: EndpointVariant) -> dict:
        if run.component is not None:
            return endpoint_config_request(name, run.component, target.role_arn or "",
                                           variant, run.tags).params
        return create_endpoint_config_request(name, model, variant, run.tags).params

    component = run.component.name if run.component is not None else None
    if scenario.production:
        model, variant = f"{run.production}-m-{EARLIER_HASH}", run.variant
        if run.autoscaling is not None and component is None:
            variant = variant.model_copy(update={"instance_type": _another(
                variant.instance_type)})
            req = register_request(run.production, VARIANT_NAME, run.autoscaling)
            account.scalable[req.params["ResourceId"]] = dict(req.params)
        account.seed_endpoint(
            run.production, config(f"{run.production}-ec-{EARLIER_HASH}", model, variant),
            model, status="Failed" if scenario.failed_production else "InService",
            component=component)
    if scenario.leftovers:
        model = f"{run.production}-m-{LEFTOVER_HASH}"
        account.seed_endpoint(f"{run.production}-c-{LEFTOVER_HASH}",
                              config(f"{run.production}-ec-{LEFTOVER_HASH}", model,
                                     run.variant), model)
        if target.s3_uri:
            bucket, prefix = split_s3(target.s3_uri)
            account.seed_object(bucket, lease_key(prefix, run.production),
                                json.dumps({"run_id": "interrupted", "ttl_s": 600}).encode())


def _another(instance_type: str) -> str:
    return "ml.g6.12xlarge" if instance_type != "ml.g6.12xlarge" else "ml.g5.12xlarge"


class _RecordingTarget(SageMakerTarget):
    recording_of: Recording

    def stage_weights(self, weights: WeightsPlan, token: SecretStr | None,
                      on_progress: Callable[[Progress], None] | None = None
                      ) -> StagingReport | None:
        """The staging's requests as s3transfer sends them per file, not the bytes."""
        if weights.delivery != "staged" or not weights.prefix:
            return None
        from lmiflow.targets.staging import planned_requests

        for req in planned_requests(weights.source, weights.prefix):
            self.recording_of.record(req)
        return None

    def endpoint_lock(self, name: str, run_id: str | None = None) -> EndpointLock:
        """The run's lease, renewed once: a real run renews it every ttl/3."""
        lock = super().endpoint_lock(name, run_id)
        renew = getattr(lock, "renew", None)
        return _RenewedOnce(lock, renew) if renew is not None else lock


class _RenewedOnce(EndpointLock):
    def __init__(self, lock: Any, renew: Callable[[], Any]):
        self.lock, self.renew = lock, renew

    def __enter__(self) -> _RenewedOnce:
        self.lock.__enter__()
        self.renew()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.__exit__(*exc)

    def assert_held(self) -> None:
        self.lock.assert_held()
