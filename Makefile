# Two commands do all the set-up on a fresh machine:
#   make split-mnist   the main job: HyperCL and Avalanche's baselines on Split MNIST (quick preset)
#   make test          the test suite
# Both create the virtual environment $(VENV) and install the package into it first.
# On a machine with one CUDA GPU:
#   make gpu-check     CUDA tests, speed table and a short benchmark in 8 minutes; report in
#                      $(OUT) (default results/gpu-check); without a GPU it says so and exits 0
#   make gpu-data      fill .device-data/ (git-ignored) for a GPU machine lent through the device
#                      tool, then run `bash benchmarks/gpu_check.sh` there (see that script)
# The benchmark targets pass --resume: run again after an interruption, they go on from the
# last checkpoint (see the README's "Long runs").

PYTHON ?= python3
VENV ?= .venv
# pytest-xdist workers for make test (Ray's tests share one of them)
TEST_WORKERS ?= 2
# Folder holding MNIST/raw/... and cifar-100-python/ (cifar-10-batches-py/ for Split CIFAR-10/100); override: make test HYPERCL_DATA_ROOT=/my/data
HYPERCL_DATA_ROOT ?= ../shared/data
export HYPERCL_DATA_ROOT

.PHONY: install test split-mnist split-cifar quickstart paper readme gpu-check gpu-data clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

split-mnist: install
	$(VENV)/bin/hypercl-bench split-mnist --preset quick --resume

# Split CIFAR-100 (10 x 10 classes), every strategy, the CPU preset (under 40 minutes on 2 cores).
split-cifar: install
	$(VENV)/bin/hypercl-bench split-cifar100 --preset cpu --resume

quickstart: install
	$(VENV)/bin/python benchmarks/quickstart.py

# The committed paper-preset results (hours on 2 CPU cores; see results/README.md).
paper: install
	$(VENV)/bin/hypercl-bench split-mnist --preset paper --seeds 3 --resume
	$(VENV)/bin/hypercl-bench pmnist-10 --preset paper --seeds 3 --resume --checkpoint-every 1000

# The README's result tables, rewritten from results/*/summary.json (the tests check they agree).
readme: install
	$(VENV)/bin/python -m hypercl.bench.readme

gpu-check: install
	$(VENV)/bin/python benchmarks/gpu_check.py $(or $(OUT),results/gpu-check) --data-root $(HYPERCL_DATA_ROOT)

# MNIST gzipped (the device tool carries 64 MiB in all) and the pure-Python packages that the GPU
# machine's image lacks, copied from $(VENV).
gpu-data: install
	VENV=$(VENV) bash benchmarks/gpu_check.sh prepare $(HYPERCL_DATA_ROOT)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
