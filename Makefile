# Two commands do all set-up on a fresh machine:
#   make demo   installs the package and runs the main job on the embedded digits data
#   make test   installs the package with the test extra and runs the test suite
# make lint (ruff, configured in pyproject.toml) runs in CI before make test.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install install-test demo test test-large lint format

install:
	$(PIP_INSTALL) -e .

install-test:
	$(PIP_INSTALL) -e ".[test]"

demo: install
	$(PYTHON) -m deit_keras.train --flagfile=experiments/digits.cfg

test: install-test
	$(PYTHON) -m pytest tests -q -ra --durations=15

lint: install-test
	$(PYTHON) -m ruff check deit_keras tests benchmarks

format: install-test
	$(PYTHON) -m ruff format deit_keras tests benchmarks
	$(PYTHON) -m ruff check --fix deit_keras tests benchmarks

test-large: install-test
	$(PYTHON) -m pytest tests -q -ra --run_large
