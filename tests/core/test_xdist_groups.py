"""`make test`'s `--dist loadgroup` keeps an xdist_group on one worker (tests/xdist_groups.py):
on pytest 9.2 with pytest-xdist 3.8 it silently did not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(textwrap.dedent("""
        import os

        import pytest


        @pytest.mark.xdist_group("one")
        @pytest.mark.parametrize("i", range(6))
        def test_grouped(i):
            with open(os.environ["WORKERS_SEEN"], "a") as f:
                f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
    """))
    seen = tmp_path / "workers"
    env = {**os.environ, "WORKERS_SEEN": str(seen), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "tests.xdist_groups", "-n", "2", "--dist", "loadgroup",
                        "test_grouped.py"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    workers = seen.read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1, workers
