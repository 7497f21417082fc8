# Quick start: `make train` (detection on the synthetic default) and `make test`.
# Both create .venv and install the package into it on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TASK ?= detect
ARGS ?=

.PHONY: install train test test-slow benchmark clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned in pyproject.toml: the build that lies on this machine's disk.
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) tools/train.py --task $(TASK) $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(ARGS)

benchmark: install
	$(PY) tools/benchmark.py --task all $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
