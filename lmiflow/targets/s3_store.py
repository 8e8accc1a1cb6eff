"""A JSON object in S3 that several runs update, such as the calibration store every SageMaker
run of one S3 prefix appends its benchmark records to.

An update is compare-and-swap on S3's conditional writes: read the object and its ETag, apply
the change, write If-Match that ETag (If-None-Match "*" when there was no object). Another run
that wrote in between makes S3 answer 412 PreconditionFailed (409 ConditionalRequestConflict
when the writes race): read again and reapply the change, a bounded number of times. So no run
loses another's records, and no lock has to be held or released.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from lmiflow.targets.aws_requests import AwsRequest, error_code
from lmiflow.targets.s3_lease import CONFLICT_CODES, PRECONDITION_CODES

# Each try is two requests; runs append once per benchmark, so contention is rare and brief.
MAX_TRIES = 5


class StoreContended(RuntimeError):
    """Other runs kept writing the object between this run's read and its write."""


def get_request(bucket: str, key: str) -> AwsRequest:
    return AwsRequest(service="s3", operation="GetObject", params={"Bucket": bucket, "Key": key})


def put_request(bucket: str, key: str, body: bytes, **condition: str) -> AwsRequest:
    """Write the object: IfNoneMatch="*" (create) or IfMatch=<etag> (replace that version)."""
    return AwsRequest(service="s3", operation="PutObject", params={
        "Bucket": bucket, "Key": key, "Body": body, "ContentType": "application/json",
        **condition})


def read(send: Callable[[AwsRequest], Any], bucket: str, key: str
         ) -> tuple[dict | None, str | None]:
    """(the object's JSON, its ETag); (None, None) when there is no object."""
    try:
        resp = send(get_request(bucket, key))
    except Exception as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None, None
        raise
    return json.loads(resp["Body"].read()), resp["ETag"]


def update(send: Callable[[AwsRequest], Any], bucket: str, key: str,
           change: Callable[[dict | None], dict]) -> None:
    """Replace the object with change(object as read), unless another run wrote it since:
    then read it again and reapply (up to MAX_TRIES)."""
    for _ in range(MAX_TRIES):
        data, etag = read(send, bucket, key)
        body = json.dumps(change(data), indent=1).encode()
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            send(put_request(bucket, key, body, **condition))
            return
        except Exception as exc:
            if error_code(exc) not in PRECONDITION_CODES + CONFLICT_CODES:
                raise
    raise StoreContended(f"s3://{bucket}/{key} changed under each of {MAX_TRIES} tries")
