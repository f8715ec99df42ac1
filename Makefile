# The one entry point for humans and CI: make run | test | lint | bench.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help venv run test lint unit integration bench clean

help:
	@echo "make run    start the local stack (Kafka, PostgreSQL) and the service"
	@echo "make test   lint, then the whole test suite against real Kafka and PostgreSQL"
	@echo "make lint   ruff and mypy --strict"
	@echo "make bench  every figure against its baseline in the same run; the table into README.md"
	@echo "make soak   chaos soak: 200,000 events under faults, verified exactly once (SOAK_EVENTS, SOAK_SEED)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

run: venv
	INGEST_LOG_FORMAT=$${INGEST_LOG_FORMAT:-console} $(BIN)/python -m devstack

lint: venv
	$(BIN)/ruff check ingest_worker devstack tests bench soak
	$(BIN)/ruff format --check ingest_worker devstack tests bench soak
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

unit: venv
	$(BIN)/pytest tests/unit

integration: venv
	$(BIN)/pytest tests/integration

# Every scenario keeps its figures in bench/results.json; bench/table.py renders them last,
# prints the table and writes it into README.md. Rounds and durations are cut to fit 15
# minutes from a fresh clone on a 2-core machine (venv, Maven and the Quix venv included).
bench: export PYTHONPATH := $(CURDIR)
bench: export INGEST_LOG_LEVEL := WARNING
bench: venv
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python bench/api.py --seconds 10
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/imports.py --seconds 10 --batches 500 --httpx
	$(BIN)/python bench/devices.py
	$(BIN)/python bench/peer.py --rounds 2
	$(BIN)/python bench/events.py
	$(BIN)/python bench/records.py
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/validators.py
	$(BIN)/python bench/table.py

clean:
	rm -rf $(VENV) .local .mypy_cache .pytest_cache .ruff_cache

# The chaos soak: results in .local/soak/<time>/ and in README.md's soak section.
.PHONY: soak
soak: venv
	$(BIN)/python -m soak --events $${SOAK_EVENTS:-200000} --seed $${SOAK_SEED:-1} --readme README.md

# The container image end to end (deploy/Dockerfile): starts dockerd when absent, builds the
# local base once, then migrate, api and worker from the image against the local stack.
.PHONY: image-test
image-test: venv
	$(BIN)/python -m devstack.image_test
