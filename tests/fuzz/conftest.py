"""Hypothesis profiles for the fuzz tests. `make test` runs `quick`: few examples, derandomized
(the same ones every run, no example database written), seconds in all. `make fuzz` runs
`long` (LMIFLOW_FUZZ=long): many more examples, random each run, failures kept in
.hypothesis/ so the next run replays them first."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None,  # one example is a whole CLI run; its time varies with the load
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much]}
settings.register_profile("quick", max_examples=12, derandomize=True, database=None, **_COMMON)
settings.register_profile("long", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "400")),
                          **_COMMON)
settings.load_profile(os.environ.get("LMIFLOW_FUZZ", "quick"))
