"""Run the CLI in-process on generated input, in a throwaway directory, and check what every
run must do: exit 0 or 2, never a traceback; on exit 2 one error line and nothing created."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lmiflow.cli import main

ENV = {"HF_HUB_OFFLINE": "1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # any AWS call fails
       "AWS_ACCESS_KEY_ID": "AKIAFUZZFUZZFUZZFUZZ", "AWS_SECRET_ACCESS_KEY": "fuzz/" + "x" * 35,
       "AWS_DEFAULT_REGION": "us-east-1"}
# An error line quotes at most a short piece of what the user wrote.
MAX_LINE = 400


@contextlib.contextmanager
def sandbox() -> Iterator[Path]:
    """A working directory with an empty local-target state folder and no credentials that
    reach anything; the environment and the working directory are restored after."""
    saved = {k: os.environ.get(k) for k in (*ENV, "LMIFLOW_STATE_DIR", "HF_TOKEN")}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="lmiflow-fuzz-") as tmp:
        root = Path(tmp)
        (root / "state").mkdir()
        os.environ.update(ENV, LMIFLOW_STATE_DIR=str(root / "state"))
        os.environ.pop("HF_TOKEN", None)
        os.chdir(root)
        try:
            yield root
        finally:
            os.chdir(cwd)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) with its output captured. An exception escapes: that is the traceback a
    user would have seen, and the test fails with it."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: a bad flag
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def check(root: Path, argv: list[str]) -> int:
    """Run and assert the contract; returns the exit code."""
    before = files_under(root)
    code, _, err = run_cli(argv)
    assert code in (0, 2), f"exit {code}: {err}"
    assert "Traceback" not in err, err
    if code == 2:
        errors = [ln for ln in err.splitlines() if ln.startswith("lmiflow: error: ")]
        assert len(errors) == 1, err
        assert len(errors[0]) <= MAX_LINE, errors[0][:1000]
        assert files_under(root) == before, "exit 2 created files"
        assert list((root / "state").iterdir()) == []
    return code
