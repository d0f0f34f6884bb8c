# Two commands do all set-up on a fresh machine:
#   make demo   installs the package and runs the main job on the embedded digits data
#   make test   installs the package with the test extra and runs the test suite
# make lint (ruff, configured in pyproject.toml) runs in CI before make test.
PYTHON ?= python3
# Test processes side by side (pytest-xdist); a test file stays in one worker, so its
# module fixtures are built once. Each worker's TensorFlow uses every core, but much of
# a test's time is single-threaded (importing TensorFlow in a CLI subprocess, tracing),
# so workers beyond the 2 CI cores fill their gaps (2 vCPU Xeon, 2026-12-06, other
# jobs on the box in both runs: 36.9 min with 2 workers, 24.0 with 3 after ~400 s of the
# slowest tests became `large`; 13.5 GB peak of 23 GB). 2 vCPU Zen 4, 2026-12-07, nothing
# else running, `bash .ci/run`: tests 21m25s-22m18s with 3 (three runs), 20m41s with 4
# (one run, 22 tests more); the largest process 5.8 GB.
TEST_WORKERS ?= 4
# A worker that dies ends the run at once, naming its test: under --dist loadfile a
# replaced worker can wait forever for work (pytest-xdist #784, #1323); a test that hangs
# is stopped after TEST_TIMEOUT s with every thread's stack (pytest-timeout).
TEST_TIMEOUT ?= 900
PYTEST_XDIST = -n $(TEST_WORKERS) --dist loadfile --max-worker-restart=0 --timeout-method=thread
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check
RUFF_VERSION = 0.17.6
LINTED = deit_keras tests benchmarks setup.py

.PHONY: install install-test demo test test-large lint format

install:
	$(PIP_INSTALL) -e .

install-test:
	$(PIP_INSTALL) -e ".[test]"

demo: install
	$(PYTHON) -m deit_keras.train --flagfile=experiments/digits.cfg

test: install-test
	$(PYTHON) -m pytest tests -q -ra --durations=15 $(PYTEST_XDIST) --timeout=$(TEST_TIMEOUT)

test-large: install-test
	$(PYTHON) -m pytest tests -q -ra --run_large $(PYTEST_XDIST) --timeout=3600

# Lint needs ruff only, not the package or its test extra.
lint:
	$(PIP_INSTALL) ruff==$(RUFF_VERSION)
	$(PYTHON) -m ruff check $(LINTED)
	$(PYTHON) -m ruff format --check $(LINTED)

format:
	$(PIP_INSTALL) ruff==$(RUFF_VERSION)
	$(PYTHON) -m ruff format $(LINTED)
	$(PYTHON) -m ruff check --fix $(LINTED)
