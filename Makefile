# Two commands do everything: `make run` (the notebook series) and `make test` (the test suite: unit and
# smoke, the notebooks at the CI size); `make test-fast` runs the unit tests that need no server and no
# notebook; `make test-full` runs the series at the default size and the functional tier on it.
# Both create the virtual environment from requirements.lock when it is missing.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS_DIR ?= artifacts
SIZE ?= default

.PHONY: env run test test-fast test-full serve clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.lock utils/pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep '^pip==' requirements.lock)" 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(PY) -m pip install -q --no-deps -r requirements.lock 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@# torch again, with its own dependencies: a CUDA build from PyPI needs its nvidia-* libraries (a CPU build adds nothing).
	$(PY) -m pip install -q "$$(grep '^torch==' requirements.lock)" 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(PY) -m pip install -q --no-deps --no-build-isolation -e utils 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@# perf_analyzer (in the tritonclient wheel) needs libb64.so.0d: Debian's libb64-0d, unpacked into the venv.
	@# Optional: without it notebook 06 skips perf_analyzer and says so.
	rm -rf $(VENV)/opt/libb64 && mkdir -p $(VENV)/opt/libb64 && cd $(VENV)/opt/libb64 && \
	  { apt-get download libb64-0d >/dev/null 2>&1 && dpkg -x libb64-0d_*.deb . && rm -f libb64-0d_*.deb \
	    || echo "note: libb64-0d not fetched; perf_analyzer will be skipped"; }
	@# The fleet's load balancer (gtcrec.serving.balancer): Debian's haproxy and the three libraries it needs that
	@# a plain Debian machine lacks, unpacked into the venv. Optional: without it the fleet tests skip and say so.
	@# `sed -n 1p`, not `head -1`: under pipefail, head closing the pipe early could kill haproxy -v (SIGPIPE)
	@# and fail the check of a working binary.
	rm -rf $(VENV)/opt/haproxy && mkdir -p $(VENV)/opt/haproxy && cd $(VENV)/opt/haproxy && \
	  { apt-get download haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1 >/dev/null 2>&1 && \
	    for deb in *.deb; do dpkg -x "$$deb" .; done && rm -f *.deb && \
	    LD_LIBRARY_PATH=usr/lib/$$(uname -m)-linux-gnu usr/sbin/haproxy -v | sed -n 1p \
	    || { rm -rf ./*; echo "note: haproxy not installed (apt-get download haproxy failed or it does not run here); the fleet tests will be skipped and notebook 09 stops at its start"; }; }
	touch $@

# Your own event (docs/your-event.md): CATALOG and CLICKS (last year's event, to train on), NEW_CATALOG (this year's,
# swapped in by notebook 07) and NEW_CLICKS (optional: 07 measures quality on them and 10 replays them).
# ONLY="00-data 01-etl ...": those notebooks alone (each reads what earlier runs wrote into ARTIFACTS_DIR).
# SIZE: default, small (the CI sizes) or tiny (minutes: checks that your files go through every notebook).
run: env
	$(PY) -m gtcrec.series --size $(SIZE) --artifacts-dir $(ARTIFACTS_DIR) \
	  $(if $(CATALOG),--catalog "$(CATALOG)") $(if $(CLICKS),--clicks "$(CLICKS)") \
	  $(if $(NEW_CATALOG),--new-catalog "$(NEW_CATALOG)") $(if $(NEW_CLICKS),--new-clicks "$(NEW_CLICKS)") \
	  $(if $(ONLY),--only $(ONLY))

# Three pytest-xdist workers on the CI machine's two cores (a third keeps the cores busy while the others wait on a
# server or a subprocess: 610 s against 640 s with two, measured 2026-12-06): the notebook tests all on one, in order,
# since they share one series (tests/notebooks/conftest.py); the tests of a module that share a module-scoped fixture
# on one (tests/conftest.py); the others on any as they come. --no-loadscope-reorder hands the groups out in the
# order they are collected, so the two longest (the series, then the guide's test) start first; by default xdist hands
# out the groups with the most tests first, and the guide's (two tests, 260 s) started last and ended the run.
# PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 3
test: env
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder tests

# The fast tier: unit tests that start no tritonserver and run no notebook (see pytest.ini).
test-fast: env
	$(PY) -m pytest -m "not server and not notebooks and not functional" tests

# The functional tier: `make run` at the default size into ARTIFACTS_DIR, then bands around the figures the
# docs quote for that size (tests/functional/). About 20 minutes on 2 cores.
test-full: env
	$(MAKE) run SIZE=default ARTIFACTS_DIR=$(ARTIFACTS_DIR)
	GTCREC_FULL_ARTIFACTS=$(ARTIFACTS_DIR) $(PY) -m pytest -m functional tests/functional

# Serve the model of `make run` on 127.0.0.1 until Ctrl-C (a copy of ARTIFACTS_DIR/05-ensemble's repository in
# ARTIFACTS_DIR/serve/), or REPOSITORY=path; HTTP_PORT / GRPC_PORT (0: free ports); SERVE_OPTIONS: more of
# `gtcrec-serve --help`'s options (e.g. SERVE_OPTIONS="--click-log clicks --log-key-file log.key").
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
SERVE_OPTIONS ?=
serve: env
	$(VENV)/bin/gtcrec-serve $(if $(REPOSITORY),$(REPOSITORY),--artifacts-dir $(ARTIFACTS_DIR)) \
	  --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) $(SERVE_OPTIONS)

clean:
	rm -rf $(ARTIFACTS_DIR)
