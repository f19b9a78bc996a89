# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing, install torch==2.13.0 (the CPU build
# on disk) first, then the package with its dev extras. Re-running is fast:
# the install step re-runs only when pyproject.toml changes.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The whole study on a built-in synthetic language family and a tiny model pre-trained
# on it: no network, about 10 minutes on 2 CPU cores. A finished demo is kept (a second
# `make demo` says so); a demo of another version is refused until
# `make demo DEMO_ARGS=--overwrite`.
DEMO_OUT ?= demo-run
DEMO_ARGS ?=
demo: install
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/vardecouple demo --out $(DEMO_OUT) $(DEMO_ARGS)

# Everything, the `slow` real-model tests included (they are the proof).
# OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads otherwise spin-wait, which slows
# small-model tests by 10x as soon as another process shares the 2 cores.
# --durations: the 25 slowest tests close the output (where the suite's time goes).
test: install
	$(VENV)/bin/ruff check src tests benchmarks
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest --durations=25

# The quick loop while developing: no real-model tests.
test-fast: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: install
	$(PY) benchmarks/subspace_recovery.py
	$(PY) benchmarks/subspace_targets.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/decode_speed.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache
