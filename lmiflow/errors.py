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


class NotAnswering(StepFailed):
    """An endpoint gave no answer within one of the config's deadlines. Says which endpoint,
    what waited for it and which deadline ran out (the config field and its value), so the
    outcome can tell the operator that production, say, is up but not answering."""

    def __init__(self, endpoint: str, waiting: str, deadline: str):
        self.endpoint = endpoint
        self.deadline = deadline
        super().__init__(f"{endpoint} is not answering: no answer to {waiting} within "
                         f"{deadline}")
