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


def check_serving_properties(kind: str, text: str) -> None:
    """Refuse, before anything is created, a serving.properties the target's server would
    refuse at start-up (OptionError naming the key). The local server's limits are its own
    (serving.options.LIMITS); on SageMaker the LMI container has no documented hard caps on
    these numbers, and the plan's memory check bounds batch and context already."""
    if kind == "local":
        from lmiflow.serving.options import check_entries
        from lmiflow.serving.properties_text import parse_entries

        check_entries(parse_entries(text))


def check_state(kind: str) -> None:
    """Before anything is created: can the target's own state be read and written? (The
    local registry and state directory; SageMaker keeps none on this machine.)"""
    if kind == "local":
        from lmiflow.targets.local import check_state_dir, default_state_dir

        check_state_dir(default_state_dir())
