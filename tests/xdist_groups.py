"""`--dist loadgroup` on pytest 9.2 and later: carry each test's xdist_group into its node id.

pytest-xdist (3.8) groups a test by appending "@<group>" to `item._nodeid` in the worker;
the scheduler then reads the group back from the node id. pytest 9.2 keeps node ids as
structured `NodeId`s (`item._id`) and no longer reads `_nodeid`, so every group silently
spread over the workers: a module fixture meant for one worker was built on each (upstream:
pytest-dev/pytest-xdist issue 1386, open; pull request 1388). This hook runs after xdist's
and puts the suffixed id where pytest 9.2 reads it; with an older pytest (no `_pytest.nodeid`)
or a fixed xdist (the two already agree) it changes nothing. tests/core/test_xdist_groups.py
fails when grouping stops working."""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):  # set in xdist workers only
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:
        return
    for item in items:
        legacy = getattr(item, "_nodeid", None)
        if isinstance(legacy, str) and "@" in legacy and legacy != item.nodeid:
            item._id = NodeId.parse(legacy)
