# pyops: two commands on a fresh machine.
#   make demo  - a full backup/verify/restore round trip on bundled sample data
#   make test  - install what is missing, lint, type-check, run the whole suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help deps venv lint test unit demo bench bench-fleet clean

help:
	@echo "make demo | make test | make lint | make unit | make bench | make bench-fleet | make clean"

deps:
	@scripts/install-deps.sh

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check pyops tests
	$(VENV)/bin/ruff format --check pyops tests
	$(VENV)/bin/mypy

# line and branch coverage of pyops/, the CLI subprocesses included (pyproject.toml)
COV_MIN ?= 85
test: deps venv lint
	rm -f .coverage .coverage.*
	$(VENV)/bin/pytest -q -p no:cacheprovider --cov=pyops --cov-report=term \
		--cov-fail-under=$(COV_MIN)

unit: venv
	$(VENV)/bin/pytest -q tests/unit

demo: deps venv
	@scripts/demo.sh

# not part of `make test`: minutes of I/O. BENCH_ARGS="--size-mb 1000 --runs 3"
bench: deps venv
	$(PY) tests/bench/bench.py $(BENCH_ARGS)

# not part of `make test`: `pyops fleet` over 500 hosts x 5 targets with a year of history
# in the S3 server on 127.0.0.1 (docs/fleet.md). FLEET_BENCH_ARGS="--hosts 500 --runs 3"
bench-fleet: venv
	$(PY) tests/bench/fleet_bench.py $(FLEET_BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-run
