"""Files one pytest session builds once and every xdist worker shares: the demo model, the
sample reports. Each is built under a file lock by the first worker that asks and read as it
is after that, so a second worker waits for it instead of building it again. Tests only read
them (a test that needs a changed copy makes its own).

Why: the demo model costs about 3 s of CPU to build (torch, a tokenizer trained from scratch),
the five sample reports about 8 s (their plots), and a migrated Prefect database about 12 s
(Prefect's SQLite migrations, which every new API server runs on an empty database). Before,
each worker built the model twice (tests/e2e, and the serving, target and CLI tests) and some
tests a third time, each worker drew the sample reports, and each Prefect API server a test
started migrated its own database: on 2 cores, CPU spent twice is wall time."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
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


def migrated_prefect_db(dir: Path) -> Path:
    """<dir>/prefect.db: an empty Prefect database, migrated by Prefect's own
    `prefect server database upgrade`, built once under a file lock. A test's API server
    starts from a copy (seed_prefect_db) instead of migrating an empty one: about 4 s to
    healthy instead of 16 s on this project's 2-core machines. The schema is Prefect's; only
    when it is built moves."""
    from filelock import FileLock

    dir.mkdir(parents=True, exist_ok=True)
    db = dir / "prefect.db"
    with FileLock(str(dir) + ".lock"):
        if not db.exists():
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PREFECT_HOME=str(dir / "building"),
                       PREFECT_SERVER_ANALYTICS_ENABLED="false")
            subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade",
                            "-y"], env=env, check=True, capture_output=True, timeout=300)
            built = dir / "building" / "prefect.db"
            con = sqlite3.connect(built)  # fold any write-ahead log into the one file
            try:
                con.execute("PRAGMA journal_mode=DELETE")
            finally:
                con.close()
            os.replace(built, db)  # whole, or not there at all
    return db


def session_prefect_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's migrated Prefect database (migrated_prefect_db), for seed_prefect_db."""
    return migrated_prefect_db(session_dir(tmp_path_factory) / "lmiflow-prefect-db")


def seed_prefect_db(template: Path, db: Path) -> Path:
    """A private copy of the migrated database at `db` (an API server writes to it)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)
    return db
