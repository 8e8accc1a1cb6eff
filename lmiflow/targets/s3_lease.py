"""A lease on one production endpoint, held in S3, so that two runs on different machines (two
CLIs, a CLI and a Prefect worker) never deploy the same endpoint at once.

Why S3: the runs share nothing else. S3 writes are strongly consistent and a PUT can be made
conditional (`If-None-Match: *`: only if the key does not exist; `If-Match: <etag>`: only if it
is unchanged; S3 answers 412 PreconditionFailed otherwise), so taking, renewing, taking over
and releasing the lease are each one atomic request, with no lock service to run.

- take: PUT If-None-Match: * . If it exists and has not expired, the run stops with "busy,
  held by run X since T" before it creates or deletes anything.
- renew: every ttl/3 a background thread rewrites the object If-Match its last ETag, pushing the
  expiry out. A killed run stops renewing; after ttl the next run may take over, with a PUT
  If-Match the expired object's ETag, so two runs cannot both take over the same expired lease.
- expiry is judged on S3's clock (the response's Date header against the object's
  LastModified), so machines with skewed clocks agree.
- release: DELETE If-Match our ETag, so a run never deletes a lease another run took over.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from lmiflow.targets.aws_requests import AwsRequest, error_code
from lmiflow.targets.base import EndpointBusy, EndpointLock

logger = logging.getLogger(__name__)

PRECONDITION_CODES = ("PreconditionFailed", "412")
CONFLICT_CODES = ("ConditionalRequestConflict", "409")


def lease_put_request(bucket: str, key: str, body: bytes, **condition: str) -> AwsRequest:
    """Take (IfNoneMatch="*"), renew or take over (IfMatch=<etag>) the lease object."""
    return AwsRequest(service="s3", operation="PutObject", params={
        "Bucket": bucket, "Key": key, "Body": body, "ContentType": "application/json",
        **condition})


def lease_delete_request(bucket: str, key: str, etag: str) -> AwsRequest:
    """Release: delete the lease only if it is still the version this run wrote."""
    return AwsRequest(service="s3", operation="DeleteObject",
                      params={"Bucket": bucket, "Key": key, "IfMatch": etag})


class LeaseHeld(EndpointBusy):
    """Another run holds the endpoint's lease."""

    def __init__(self, endpoint: str, holder: dict[str, Any]):
        self.holder = holder
        super().__init__(
            f"endpoint {endpoint} is busy, held by run {holder.get('run_id', '?')} since "
            f"{holder.get('acquired_at', '?')} on {holder.get('host', '?')} (lease expires "
            f"{holder.get('ttl_s', '?')} s after its last renewal, "
            f"{holder.get('renewed_at', '?')}); nothing was created or deleted")


class LeaseLost(RuntimeError):
    """This run's lease expired and another run took it over."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds")


class S3Lease(EndpointLock):
    """Context manager: take the lease on enter (LeaseHeld when busy), renew it while the body
    runs, release it on exit. `assert_held()` raises LeaseLost when a renewal found the lease
    taken over: call it before an irreversible step (promotion)."""

    def __init__(self, send: Callable[[AwsRequest], Any], bucket: str, key: str, endpoint: str,
                 ttl_s: int,
                 run_id: str | None = None, *, now: Callable[[], dt.datetime] = _now,
                 renew_every_s: float | None = None):
        if ttl_s < 3:
            raise ValueError("ttl_s: at least 3 s (renewed every third of it)")
        self.send, self.bucket, self.key, self.endpoint = send, bucket, key, endpoint
        self.ttl_s = ttl_s
        self.run_id = run_id or uuid.uuid4().hex
        self._now = now
        self.renew_every_s = renew_every_s if renew_every_s is not None else ttl_s / 3
        self.etag: str | None = None
        self.acquired_at: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- the object --

    def _body(self) -> bytes:
        now = self._now()
        return json.dumps({
            "run_id": self.run_id, "endpoint": self.endpoint,
            "host": f"{socket.gethostname()}:{os.getpid()}",
            "acquired_at": self.acquired_at or _iso(now), "renewed_at": _iso(now),
            "ttl_s": self.ttl_s,
        }, sort_keys=True).encode()

    def _put(self, **condition: str) -> str:
        return self.send(lease_put_request(self.bucket, self.key, self._body(), **condition))[
            "ETag"]

    def _read(self) -> tuple[dict[str, Any], str, bool] | None:
        """(holder, etag, expired) of the current lease, None when there is none."""
        try:
            resp = self.send(AwsRequest(service="s3", operation="GetObject",
                                        params={"Bucket": self.bucket, "Key": self.key}))
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        try:
            holder = json.loads(resp["Body"].read())
        except (ValueError, UnicodeDecodeError):
            holder = {}
        ttl = holder.get("ttl_s", self.ttl_s)
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        s3_now = email.utils.parsedate_to_datetime(date) if date else self._now()
        expired = (s3_now - resp["LastModified"]).total_seconds() > ttl
        return holder, resp["ETag"], expired

    # -- take, renew, release --

    def acquire(self) -> None:
        self.acquired_at = _iso(self._now())
        try:
            self.etag = self._put(IfNoneMatch="*")
        except Exception as exc:
            if error_code(exc) not in PRECONDITION_CODES + CONFLICT_CODES:
                raise
            self._take_over_if_expired()
        logger.info("lease on %s taken by run %s (s3://%s/%s, ttl %d s)", self.endpoint,
                    self.run_id, self.bucket, self.key, self.ttl_s)

    def _take_over_if_expired(self) -> None:
        current = self._read()
        if current is None:  # released between our PUT and GET: try once more
            self.etag = self._put(IfNoneMatch="*")
            return
        holder, etag, expired = current
        if not expired:
            raise LeaseHeld(self.endpoint, holder)
        try:
            self.etag = self._put(IfMatch=etag)
        except Exception as exc:
            if error_code(exc) in PRECONDITION_CODES + CONFLICT_CODES:
                again = self._read()
                raise LeaseHeld(self.endpoint, again[0] if again else holder) from None
            raise
        logger.warning("took over the expired lease of run %s on %s (last renewed %s)",
                       holder.get("run_id"), self.endpoint, holder.get("renewed_at"))

    def renew(self) -> bool:
        """One renewal; False (and `lost` set) when the lease is no longer ours."""
        with self._lock:
            if self.lost or self.etag is None:
                return False
            try:
                self.etag = self._put(IfMatch=self.etag)
                return True
            except Exception as exc:
                if error_code(exc) in PRECONDITION_CODES:
                    self.lost = "the lease was taken over after it expired"
                    logger.error("lease on %s lost: %s", self.endpoint, self.lost)
                    return False
                logger.warning("lease renewal failed (will retry): %s", exc)
                return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            if not self.renew():
                return

    def assert_held(self) -> None:
        if self.lost:
            raise LeaseLost(f"lease on {self.endpoint}: {self.lost}; stopping before promotion")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if self.etag is None or self.lost:
                return
            try:
                self.send(lease_delete_request(self.bucket, self.key, self.etag))
            except Exception as exc:
                if error_code(exc) not in (*PRECONDITION_CODES, "NoSuchKey", "404"):
                    raise
            self.etag = None
        logger.info("lease on %s released by run %s", self.endpoint, self.run_id)

    def __enter__(self) -> S3Lease:
        self.acquire()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.endpoint}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
