# Two commands do all set-up on a fresh machine:
#   make demo   installs the package and runs the main job on the embedded digits data
#   make test   installs the package with the test extra and runs the test suite
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install install-test demo test test-large

install:
	$(PIP_INSTALL) -e .

install-test:
	$(PIP_INSTALL) -e ".[test]"

demo: install
	$(PYTHON) -m deit_keras.train --flagfile=experiments/digits.cfg

test: install-test
	$(PYTHON) -m pytest tests -q -ra --durations=15

test-large: install-test
	$(PYTHON) -m pytest tests -q -ra --run_large
