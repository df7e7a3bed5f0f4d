# Two commands do all the set-up on a fresh machine:
#   make split-mnist   the main job (HyperCL on Split MNIST)
#   make test          the test suite
# Both create the virtual environment $(VENV) and install the package into it first.

PYTHON ?= python3
VENV ?= .venv
# Folder holding MNIST/raw/... (and later CIFAR); override: make test HYPERCL_DATA_ROOT=/my/data
HYPERCL_DATA_ROOT ?= ../shared/data
export HYPERCL_DATA_ROOT

.PHONY: install test split-mnist clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/python -m pytest -q

split-mnist: install
	$(VENV)/bin/python benchmarks/quickstart.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
