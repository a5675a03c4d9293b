# QuantDAG. `make run` and `make test` bootstrap everything they need on a fresh clone.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
PY := .venv/bin/python
export UV_PYTHON_DOWNLOADS := never
export DAGSTER_HOME := $(CURDIR)/.dagster_home
# LightGBM's OpenMP threads spin while they wait; on a busy machine that starves everything else.
export OMP_WAIT_POLICY := PASSIVE
BENCH ?= all

.PHONY: help env dagster-home run test dev bench lint live-demo

help:
	@echo "make run    materialize the whole asset graph on the bundled sample"
	@echo "make test   run every test"
	@echo "make dev    open the Dagster UI on http://127.0.0.1:3000"
	@echo "make bench  run the benchmarks (BENCH=ingest for one part)"
	@echo "make lint   ruff and mypy"
	@echo "make live-demo  replay a real session against the local Alpaca server (live path)"

# uv is installed into a project-local tool venv so that no global uv (or pyenv shim) is needed.
$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	touch $@

# Rewritten on every call, so setting or unsetting DAGSTER_PG_URL takes effect at once.
dagster-home:
	mkdir -p $(DAGSTER_HOME)
	if [ -n "$${DAGSTER_PG_URL:-}" ]; then src=deploy/dagster.postgres.yaml; else src=deploy/dagster.yaml; fi; \
	cmp -s $$src $(DAGSTER_HOME)/dagster.yaml || cp $$src $(DAGSTER_HOME)/dagster.yaml

env: .venv/.synced dagster-home

run: env
	$(PY) -m quantdag.run $(ARGS)

test: env bench/.venv/.synced
	$(PY) -m pytest

# The Dagster UI (http://127.0.0.1:3000) and, beside it, the MLflow UI (http://127.0.0.1:5000)
# that the backtest report's link opens; both stop with Ctrl-C.
dev: env
	@mkdir -p .quantdag
	@.venv/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.quantdag/mlflow.db \
		-h 127.0.0.1 -p 5000 --workers 1 >.quantdag/mlflow-ui.log 2>&1 & \
	trap 'kill $$! 2>/dev/null' EXIT INT TERM; \
	.venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Peers we benchmark against live in their own environment, never in the project's.
bench/.venv/.synced: bench/requirements.txt | $(UV)
	$(UV) venv --quiet --allow-existing --python 3.12 bench/.venv
	$(UV) pip install --quiet --python bench/.venv/bin/python -r bench/requirements.txt
	touch $@

live-demo: env
	$(PY) -m quantdag.live_demo $(ARGS)

bench: env bench/.venv/.synced
	$(PY) -m bench.run --only $(BENCH)

lint: env
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
