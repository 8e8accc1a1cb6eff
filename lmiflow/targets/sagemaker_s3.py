"""What SageMakerTarget keeps in its S3 prefix (a mixin of targets.sagemaker): the run lease,
production's baseline, the calibration store, the run's report, and the model files a
benchmark reads its tokenizer from."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlencode

from lmiflow.targets import s3_store
from lmiflow.targets.aws_requests import aws_error, request, split_s3
from lmiflow.targets.base import EndpointLock, ModelFiles, StoredReport, StoreOffline, check_name
from lmiflow.targets.sagemaker_requests import (
    BASELINE_FILE,
    CALIBRATION_FILE,
    lease_key,
    put_object_request,
)

# one log for the whole target: these lines read with the ones sagemaker.py writes
logger = logging.getLogger("lmiflow.targets.sagemaker")


class S3Storage:
    """The S3 prefix's objects for SageMakerTarget (which holds s3_uri and send)."""

    def endpoint_lock(self, name: str, run_id: str | None = None) -> EndpointLock:
        """A lease in the S3 prefix (targets.s3_lease), so it holds across machines. Without an
        S3 prefix there is nothing shared to hold it in, and only update_endpoint's refusal of
        a busy endpoint protects production."""
        from lmiflow.targets.s3_lease import S3Lease

        check_name("endpoint", name)
        if not self.s3_uri:
            logger.warning("no target.s3_uri: endpoint %s is not locked across machines", name)
            return EndpointLock()
        bucket, prefix = split_s3(self.s3_uri)
        return S3Lease(self.send, bucket, lease_key(prefix, name), name, self.lease_ttl_s,
                       run_id)

    # -- production's baseline: s3_uri/<endpoint>/baseline.json --

    def baseline_location(self, endpoint: str) -> tuple[str, str]:
        """(bucket, key) of production's baseline: s3_uri/<endpoint>/baseline.json."""
        check_name("endpoint", endpoint)
        bucket, prefix = split_s3(self.s3_uri or "")
        return bucket, f"{prefix}{endpoint}/{BASELINE_FILE}"

    def load_baseline(self, endpoint: str) -> dict | None:
        if not self.s3_uri:
            return None
        bucket, key = self.baseline_location(endpoint)
        try:
            body = self.send(request("s3", "GetObject", Bucket=bucket, Key=key))["Body"].read()
        except Exception as exc:
            if aws_error(exc)[0] in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return json.loads(body)

    def save_baseline(self, endpoint: str, data: dict) -> str | None:
        if not self.s3_uri:
            return None
        bucket, key = self.baseline_location(endpoint)
        self.send(put_object_request(f"s3://{bucket}/{key}", json.dumps(
            data, indent=2, sort_keys=True).encode(), "application/json"))
        return f"s3://{bucket}/{key}"

    # -- the latency model's calibration store: s3_uri/calibration.json --

    def calibration_location(self) -> tuple[str, str]:
        """(bucket, key) of the calibration store every run of this S3 prefix shares."""
        bucket, prefix = split_s3(self.s3_uri or "")
        return bucket, f"{prefix}{CALIBRATION_FILE}"

    def calibration_uri(self) -> str | None:
        return "s3://{}/{}".format(*self.calibration_location()) if self.s3_uri else None

    def load_calibration(self, *, offline: bool = False) -> dict | None:
        if not self.s3_uri:
            return None
        bucket, key = self.calibration_location()
        if offline:
            raise StoreOffline(f"s3://{bucket}/{key} is read when the deploy plans, not by a "
                               "dry run (it calls no AWS service)")
        return s3_store.read(self.send, bucket, key)[0]

    def update_calibration(self, change: Callable[[dict | None], dict]) -> str | None:
        if not self.s3_uri:
            return None
        bucket, key = self.calibration_location()
        s3_store.update(self.send, bucket, key, change)
        return self.calibration_uri()

    # ---- the run's report -----------------------------------------------------------------

    def report_folder(self, endpoint: str, run: str) -> tuple[str, str]:
        """(bucket, key prefix ending in /) of a run's report: <prefix><endpoint>/reports/<run>/
        next to the baseline; run is the candidate's name, so a rerun of the same spec
        replaces its report and each candidate keeps its own."""
        bucket, prefix = split_s3(self.s3_uri)
        return bucket, f"{prefix}{endpoint}/reports/{run}/"

    def store_report(self, endpoint: str, run: str, files: dict[str, bytes]) -> StoredReport | None:
        """The report files in the S3 prefix, so a remote worker's report outlives it; the
        link opens report.html in the S3 console."""
        if not self.s3_uri:
            return None
        bucket, folder = self.report_folder(endpoint, run)
        types = {"html": "text/html; charset=utf-8", "json": "application/json",
                 "md": "text/markdown; charset=utf-8"}
        for name, body in files.items():
            self.send(put_object_request(f"s3://{bucket}/{folder}{name}", body,
                                         types.get(name.rsplit(".", 1)[-1], "text/plain")))
        key = folder + "report.html"
        return StoredReport(
            location=f"s3://{bucket}/{key}",
            url=f"https://{self.region}.console.aws.amazon.com/s3/object/{bucket}?"
                + urlencode({"region": self.region, "prefix": key}))

    def model_files(self, endpoint: str, dest: Path, names: Sequence[str]) -> ModelFiles | None:
        """The model's serving.properties from its S3 prefix (for env packaging: the few
        OPTION_* entries that say which model and how long a context, never a secret), and
        those of `names` found in the prefix or an s3:// option.model_id, copied into dest."""
        from lmiflow.serving.properties_text import parse_entries

        d = self._describe_raw(endpoint)
        model_name = self.config_model_name(d["EndpointConfigName"]) if d else None
        if model_name is None:
            return None
        container = self.send(request("sagemaker", "DescribeModel", ModelName=model_name)
                              ).get("PrimaryContainer", {})
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        prefix = container.get("ModelDataSource", {}).get("S3DataSource", {}).get("S3Uri")
        if prefix:
            self._copy_s3_files(prefix, ["serving.properties", *names], dest)
        props = dest / "serving.properties"
        if props.is_file():
            entries = parse_entries(props.read_text())
            props.unlink()  # the entries travel as data; the file may hold a secret
        else:
            env = container.get("Environment") or {}
            keep = ("OPTION_MODEL_ID", "OPTION_MAX_MODEL_LEN", "OPTION_REVISION")
            entries = {"option." + k[len("OPTION_"):].lower(): v for k, v in env.items()
                       if k in keep}
            if env.get("HF_MODEL_ID"):
                entries.setdefault("option.model_id", env["HF_MODEL_ID"])
        model_id = entries.get("option.model_id", "")
        if model_id.startswith("s3://"):
            self._copy_s3_files(model_id if model_id.endswith("/") else model_id + "/",
                                list(names), dest)
        return ModelFiles(directory=dest, properties=entries)

    def _copy_s3_files(self, prefix: str, names: Sequence[str], dest: Path) -> None:
        bucket, key_prefix = split_s3(prefix)
        for name in names:
            try:
                body = self.send(request("s3", "GetObject", Bucket=bucket,
                                          Key=key_prefix + name))["Body"].read()
            except Exception as exc:
                if aws_error(exc)[0] in ("NoSuchKey", "404", "NotFound"):
                    continue  # a 403 is a permission error (send), not a missing file
                raise
            (dest / name).write_bytes(body)
