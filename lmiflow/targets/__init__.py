"""Where endpoints live. `make_target(kind, **kwargs)` is the one way callers build a Target, so
the CLI, tasks and tests share the construction rules (and heavy imports stay lazy)."""

from __future__ import annotations

from typing import Any

from lmiflow.targets.base import Target

TARGET_KINDS = ("local", "sagemaker")


def make_target(kind: str, **kwargs: Any) -> Target:
    """kind "local": LocalTarget(state_dir=None); kind "sagemaker": SageMakerTarget(region=...,
    role_arn=..., s3_uri=..., credentials_block=..., ...; region defaults to AWS_REGION).
    kwargs set to None are dropped, so a caller can pass every option it has and let each
    target take its defaults."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if kind == "local":
        from lmiflow.targets.local import LocalTarget

        return LocalTarget(**kwargs)
    if kind == "sagemaker":
        import os

        from lmiflow.targets.sagemaker import SageMakerTarget

        if "region" not in kwargs:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if not region:
                raise ValueError("target.region: required for sagemaker (or set AWS_REGION)")
            kwargs["region"] = region
        return SageMakerTarget(**kwargs)
    raise ValueError(f"target kind {kind!r}: expected one of {', '.join(TARGET_KINDS)}")


def configured_target(kind: str, *, state_dir: str | None = None, region: str | None = None,
                      role_arn: str | None = None, s3_uri: str | None = None,
                      credentials_block: str | None = None, packaging: str | None = None,
                      vpc: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
                      lease_ttl_s: int | None = None, mode: str | None = None) -> Target:
    """The target a deployment config's `target` section (or a command line) describes: each
    kind takes the settings that apply to it and ignores the others. vpc: (subnets, security
    groups)."""
    if kind == "local":
        return make_target("local", state_dir=state_dir)
    vpc_config = ({"Subnets": list(vpc[0]), "SecurityGroupIds": list(vpc[1])} if vpc
                  else None)
    return make_target(kind, region=region, role_arn=role_arn, s3_uri=s3_uri,
                       credentials_block=credentials_block, packaging=packaging, vpc=vpc_config,
                       lease_ttl_s=lease_ttl_s, mode=mode)


def recording_of(target: Target) -> Any:
    """Where the platform has an API to list: a recorder of the requests a run sends, whose
    twins of `target` record instead of sending (targets.recording); None elsewhere."""
    if target.kind != "sagemaker":
        return None
    from lmiflow.targets.recording import Recording

    return Recording(target)  # type: ignore[arg-type]
