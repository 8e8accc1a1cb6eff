"""Errors the CLI turns into exit codes: bad input is the user's to fix (exit 2)."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input: names the field and the reason. The CLI prints it and exits 2."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class StateError(UserInputError):
    """A file or directory lmiflow keeps (local registry, baseline, report directory) cannot
    be read or written. The reason names the path and the command that recovers; the CLI
    prints it as one line and exits 2, like any input the user has to fix."""


class StepFailed(RuntimeError):
    """A step failed for a reason a retry cannot fix (endpoint Failed, smoke test failed...)."""
