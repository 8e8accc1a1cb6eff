"""Files one pytest session builds once and every xdist worker shares: the demo model, the
sample reports. Each is built under a file lock by the first worker that asks and read as it
is after that, so a second worker waits for it instead of building it again. Tests only read
them (a test that needs a changed copy makes its own).

Why: the demo model costs about 3 s of CPU to build (torch, a tokenizer trained from scratch)
and the five sample reports about 8 s (their plots). Before, each worker built the model twice
(tests/e2e, and the serving, target and CLI tests) and some tests a third time, and each
worker drew the sample reports: on 2 cores, CPU spent twice is wall time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's base temp dir: under xdist each worker's base temp dir is a folder of
    the controller's, which is the session's."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def session_demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<session dir>/lmiflow-demo-model, built on first use (ensure_demo_model's file lock)."""
    from lmiflow.serving.demo_model import ensure_demo_model

    return ensure_demo_model(session_dir(tmp_path_factory) / "lmiflow-demo-model")
