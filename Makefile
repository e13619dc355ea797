# Two commands do everything: `make run` (the notebook series) and `make test` (the test suite).
# Both create the virtual environment from requirements.lock when it is missing.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS_DIR ?= artifacts
SIZE ?= default

.PHONY: env run test clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.lock utils/pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep '^pip==' requirements.lock)"
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e utils
	touch $@

run: env
	$(PY) -m gtcrec.series --size $(SIZE) --artifacts-dir $(ARTIFACTS_DIR)

test: env
	$(PY) -m pytest tests

clean:
	rm -rf $(ARTIFACTS_DIR)
