"""A lock stand-in that writes when it is taken and released into a list of calls, so a test
can assert what ran while it was held."""

from __future__ import annotations


class LoggedLock:
    def __init__(self, calls: list[str]):
        self.calls = calls

    def __enter__(self) -> LoggedLock:
        self.calls.append("lock")
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.append("release")

    def assert_held(self) -> None:
        """Held throughout (EndpointLock's check)."""
