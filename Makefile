# Every target creates/uses .venv and installs what it needs (once per pyproject change).
# torch: on a machine without an NVIDIA GPU we ask for the CPU build first (torch==2.13.0,
# which pip takes from local disk on this project's machines); a GPU user installs the CUDA
# build of their choice into .venv first (see README), and the [local] range accepts it.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.lmiflow-installed
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/local-demo.yaml
REPORT_DIR ?= reports/local-demo
# The demo's production lives on this machine and serves only the demo: once its server is
# gone (a reboot), the endpoint is Failed and a plain deploy refuses it, asking for
# --replace-failed, which nobody can pass through `make`. So `make demo` replaces its own
# dead production, and its summary says so ("replaced the Failed production"); a healthy
# production is updated as before. `make demo DEMO_FLAGS=` refuses like any other deploy.
DEMO_FLAGS ?= --replace-failed

.PHONY: install demo test lint perf soak chaos fuzz mutate clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if ! $(PY) -c "import torch" 2>/dev/null && ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "installing CPU torch ($(TORCH_SPEC))"; $(PIP) install -q "$(TORCH_SPEC)"; fi
	$(PIP) install -q -e '.[local,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lmiflow demo-model .lmiflow/demo-model
	$(PY) -m lmiflow deploy $(CONFIG) --report-dir $(REPORT_DIR) $(DEMO_FLAGS)

# Three pytest-xdist workers on two cores, each with its own session servers
# (tests/conftest.py says how to keep tests together: xdist_group). Three, not two: much of
# an e2e test is waiting on a server it started, and a third worker fills that time.
# --durations: a slow test shows in CI's log the day it lands. WORKERS=0 runs in this
# process.
WORKERS ?= 3
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -n $(WORKERS) --dist loadgroup --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check . || true

perf: $(STAMP)
	@for f in perf/*.py; do [ "$$f" = perf/soak.py ] && continue; echo "== $$f"; $(PY) $$f || exit 1; done

soak: $(STAMP)
	$(PY) perf/soak.py --minutes $${MINUTES:-5}

# Kill/fault matrix against real deploys (about 25 min on 2 cores; mounts a tmpfs when root).
chaos: $(STAMP)
	$(PY) -m tests.chaos.matrix

# Property-based fuzzing of what users write (tests/fuzz): `make test` runs a fixed dozen
# examples per property; this runs FUZZ_EXAMPLES (default 400) random ones each, and keeps
# any failure in .hypothesis/ to replay first next time.
fuzz: $(STAMP)
	LMIFLOW_FUZZ=long $(VENV)/bin/pytest -q -p no:cacheprovider tests/fuzz

clean:
	rm -rf $(VENV) .lmiflow reports .pytest_cache .ruff_cache .hypothesis

# Mutation testing of the pure core (not part of `make test` or CI): prints the score per
# module and every surviving mutant. ~15 min on 2 cores. A subset: make mutate ONLY='lmiflow.sizing.memory.*'
mutate: $(STAMP)
	$(PY) -c "import mutmut" 2>/dev/null || $(PIP) install -q -e '.[mutate]'
	$(PY) scripts/mutate.py $(ONLY)
