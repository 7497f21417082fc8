# Quick start: `make train` (detection on the synthetic default) and `make test`.
# Both create .venv and install the package into it on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TASK ?= detect
ARGS ?=

.PHONY: install train test test-slow test-all benchmark clean

# The package, editable, with its dev tools, at the exact versions of constraints.txt (the ones
# the suite passed with; torch is the build on the project machines' disk). Reruns when either
# file changes.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# Create .venv and install into it (once; see above).
install: $(VENV)/.installed

# Train one task (TASK=detect by default) on the synthetic default data; ARGS go to tools/train.py.
train: install
	$(PY) tools/train.py --task $(TASK) $(ARGS)

# Default tier, what CI runs (.ci/run): unit and oracle tests plus one short end-to-end run per
# task; under 8 minutes on a quiet 2-core machine. pyproject's addopts deselect `slow`.
test: install
	$(PY) -m pytest -q $(ARGS)

# Slow tier: full training runs, DDP, kill / resume, real-data conversions (`-m slow` replaces
# the default `-m 'not slow'`).
test-slow: install
	$(PY) -m pytest -q -m slow $(ARGS)

# Both tiers in one session.
test-all: install
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

# Speed of every task (tools/benchmark.py); not a test.
benchmark: install
	$(PY) tools/benchmark.py --task all $(ARGS)

# Remove the virtual environment, runs and pytest's cache.
clean:
	rm -rf $(VENV) runs .pytest_cache
