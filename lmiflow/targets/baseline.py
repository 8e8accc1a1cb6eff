"""Production's last promoted benchmark, kept where a later run of the same endpoint finds it:
the local state directory, or the target's S3 prefix on SageMaker."""

from __future__ import annotations

import json
from typing import Any

from lmiflow.state_files import ensure_dir, read_json, write_atomic

BASELINE_FILE = "baseline.json"


def _s3_location(target: Any, endpoint: str) -> tuple[str, str]:
    from lmiflow.targets.sagemaker import _split_s3

    bucket, prefix = _split_s3(target.s3_uri)
    return bucket, f"{prefix}{endpoint}/{BASELINE_FILE}"


def load_baseline(target: Any, endpoint: str) -> dict | None:
    if target.kind == "local":
        path = target.state_dir / "baselines" / f"{endpoint}.json"
        return read_json(path, "LMIFLOW_STATE_DIR", f"remove it with `rm {path}` (the next "
                         "promotion records a new baseline)")
    if not getattr(target, "s3_uri", None):
        return None
    bucket, key = _s3_location(target, endpoint)
    try:
        body = target.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    return json.loads(body)


def save_baseline(target: Any, endpoint: str, data: dict) -> str | None:
    text = json.dumps(data, indent=2, sort_keys=True)
    if target.kind == "local":
        path = target.state_dir / "baselines" / f"{endpoint}.json"
        ensure_dir(path.parent, "LMIFLOW_STATE_DIR")
        write_atomic(path, text, "LMIFLOW_STATE_DIR", mode=0o644)
        return str(path)
    if not getattr(target, "s3_uri", None):
        return None
    bucket, key = _s3_location(target, endpoint)
    target.s3.put_object(Bucket=bucket, Key=key, Body=text.encode(),
                         ContentType="application/json")
    return f"s3://{bucket}/{key}"
