# Thin wrappers over the Python CLI. `make bench` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
METHODS ?=
IRS ?=
SEEDS ?=
DEVICES ?=
EXECUTOR ?=
RESULTS ?= results
# Profile overrides, passed to the CLI when set: make bench EPOCHS=1 EPS=8/255 DATA_ROOT=~/data DEVICE=cuda:1 AMP=bf16;
# ARGS passes any other CLI flags as written (make bench ARGS="--force --quiet").
EPOCHS ?=
EPS ?=
DATA_ROOT ?=
DEVICE ?=
AMP ?=
ARGS ?=
BENCH_ARGS = --profile $(PROFILE) --results $(RESULTS) $(if $(METHODS),--methods $(METHODS)) \
	$(if $(IRS),--irs $(IRS)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(DEVICES),--devices $(DEVICES)) \
	$(if $(EXECUTOR),--executor $(EXECUTOR)) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(EPS),--eps $(EPS)) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) \
	$(if $(DEVICE),--device $(DEVICE)) $(if $(AMP),--amp $(AMP)) $(ARGS)

.PHONY: setup bench report test gpu-check perf docs clean-venv

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

bench: setup
	$(PY) -m benchmark $(BENCH_ARGS)

# HTML report of every finished cell under $(RESULTS): reports/index.html (leaderboards, per-class tables, exports).
report: setup
	$(PY) -m benchmark.report --results $(RESULTS)

# Two workers, a test file each at a time (--dist loadfile: a file's fixtures, its Slurm or Ray cluster and its
# subprocesses stay on one worker), the longest files first (tests/conftest.py); TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# Regenerate the method cards in docs/methods/ from the methods' docstrings and registry entries.
docs: setup
	$(PY) -m benchmark.tools.cards

clean-venv:
	rm -rf $(VENV)

# On a CUDA machine: GPU tests plus a short CUDA run on synthetic CIFAR-shaped data (speed, memory, agreement).
# Uses .venv where it exists, else the machine's python3 (GPU images come with torch preinstalled).
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m benchmark.tools.gpu_check

# Training speed: naive and fair PGD-10 AT loops vs our fast and captured paths, interleaved (JSON in results/perf.json).
# On a CUDA machine CIFAR ResNet-18; without one a tiny CPU configuration. PERF_ARGS passes options through.
PERF_ARGS ?=
perf:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m benchmark.tools.perf --out $(RESULTS)/perf.json $(PERF_ARGS)
