# edgeops — `make demo` and `make test` set everything up on a fresh machine.

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION ?= 0.13.9
# Use a uv already on PATH; otherwise bootstrap a pinned one into .tools/.
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
# Without .pyc files every process recompiles torch and mlflow (tens of seconds each).
export UV_COMPILE_BYTECODE := 1
RUN := $(UV) run --frozen --no-sync
PYTHON_SOURCES := src components pipelines tests

.PHONY: help install up down status compile demo test lint typecheck pytest bench-pipeline clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-16s %s\n", $$1, $$2}'

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

.venv/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode
	@touch $@

install: .venv/.installed ## create .venv from uv.lock

up: install ## start S3 + MLflow on 127.0.0.1 (idempotent)
	$(RUN) edgeops up

down: ## stop the local stack (state in .edgeops/ is kept)
	@if [ -x .venv/bin/edgeops ]; then $(RUN) edgeops down; else echo "nothing to stop"; fi

status: install ## show the local stack
	$(RUN) edgeops status

compile: install ## compile the KFP pipeline to pipelines/mat_occupancy.yaml
	$(RUN) python -m pipelines.mat_occupancy

demo: install ## stack up, pipeline on the mat recordings, device check, summary
	$(RUN) edgeops demo

bench-pipeline: up ## wall time of each stage and of the whole pipeline
	$(RUN) edgeops pipeline run

lint: install ## ruff lint and format check
	$(RUN) ruff check $(PYTHON_SOURCES)
	$(RUN) ruff format --check $(PYTHON_SOURCES)

typecheck: install ## mypy on the package
	$(RUN) mypy src/edgeops

pytest: install
	$(RUN) pytest

test: lint typecheck pytest ## lint, type-check, unit and end-to-end tests

clean: down ## stop the stack and remove all local state and outputs
	rm -rf .edgeops out
