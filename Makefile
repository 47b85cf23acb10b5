# Two commands on a fresh machine (Python 3.11 and make): `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
export PYTHONPATH := $(CURDIR)
export NO_MKDOCS_2_WARNING := 1

# Local settings: .env at the project root (see .env.example) is read by the settings class itself.

.PHONY: help docs install demo up stop status test test-fast lint graph settings-docs lock clean bench backtest rerun secrets image
.DEFAULT_GOAL := help

help:  ## this list (a bare `make` prints it)
	@echo "On a fresh machine: make demo (the whole loop, ~8 minutes), make test (every test, ~12 minutes). Targets:"
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-z-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# What a target that runs the project's Python says on a fresh clone, instead of failing.
NEEDS_VENV = @test -x $(BIN)/python || { echo "no .venv here yet: \`make demo\` installs it and starts the services (\`make install\` only installs)"; exit 1; }

install: $(VENV)/.installed  ## the venv from requirements.txt (the other targets do it when needed)

# The libraries' bytecode is compiled here, once (50 s): where PYTHONDONTWRITEBYTECODE is set (as on
# the machine this was measured on), every process would otherwise compile them again at each start,
# which doubled their import time and cost a three-worker test run 28% more CPU (3,442 vs 2,690 CPU-s).
$(VENV)/.installed: requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --compile-bytecode --python $(BIN)/python requirements.txt
	@touch $@

demo: install  ## the whole first half of the loop on embedded defaults; services keep running
	$(BIN)/python -m include.local.demo

rerun:  ## trigger a DAG run through the REST API: make rerun DAG=train REASON="alert 1234: drift" [CONF='{"n_estimators": 200}']
	$(NEEDS_VENV)
	$(BIN)/python -m include.local.rerun $(DAG) --reason "$(REASON)" --conf '$(or $(CONF),{})'

stop:  ## stop the services `make demo` started
	@if test -x $(BIN)/python; then $(BIN)/python -m include.local.stack stop; else echo "nothing to stop: no .venv here yet, so nothing was started"; fi

status:  ## each service's health (scheduler, dag-processor, API, MLflow, serving entry, live slot, guard), the live version and the last monitor decision; non-zero if any is down
	$(NEEDS_VENV)
	$(BIN)/python -m include.local.stack status

# Test processes: three pytest-xdist workers by default, each test module on one of them so its
# services start once, the longest modules first (tests/conftest.py); the two cores stay saturated
# while the long set-ups wait on their services. TEST_WORKERS=1 runs the suite serially.
TEST_WORKERS ?= 3
PYTEST_PARALLEL = $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

test: install  ## lint, the layer contracts and the docs build, then every test: DAG integrity, unit, integration (real MLflow, GX, dag.test), e2e, production, browser
	$(BIN)/ruff check dags include plugins tests
	$(BIN)/lint-imports --no-logo
	$(BIN)/python tests/tools/import_graph.py
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: install  ## the tests that need no server
	$(BIN)/python -m pytest -n 2 --dist loadscope -m "not integration and not e2e and not production and not faults"

bench: install  ## benchmarks against baselines measured in the same run (ratios, not timed tests)
	$(BIN)/python tests/bench/bench_serving.py
	$(BIN)/python tests/bench/bench_drift.py
	$(BIN)/python tests/bench/bench_bento.py
	$(BIN)/python tests/bench/bench_dask.py
	$(BIN)/python tests/bench/bench_executors.py
	$(BIN)/python tests/bench/bench_health.py

docs: install  ## the docs site (MkDocs Material) into .state/site/, with --strict: a broken link or anchor fails
	$(BIN)/mkdocs build --strict

backtest: install  ## every retrain policy replayed on the use case's history week by week, no servers: backtest/results.{json,md}, served_quality.png [ARGS="--weeks 13 --window-weeks 4"]
	$(BIN)/python -m include.backtest --sweep $(ARGS)
	cp backtest/served_quality.png docs/img/served_quality.png

lint: install  ## ruff and the layer contracts
	$(BIN)/ruff check dags include plugins tests
	$(BIN)/lint-imports --no-logo

graph: install  ## the import graph of include/ (stages; MODULES=1 for every module); fails on a cycle
	$(BIN)/python tests/tools/import_graph.py $(if $(MODULES),--modules)

settings-docs: install  ## regenerate .env.example and docs/configuration.md from include/settings.py
	$(BIN)/python tests/tools/settings_docs.py

lock:  ## re-resolve requirements.txt from requirements.in, then the bentos' lock against it
	$(NEEDS_VENV)
	$(BIN)/uv pip compile requirements.in -o requirements.txt --python-version 3.11
	$(BIN)/uv pip compile include/serving/requirements.in -c requirements.txt -o include/serving/requirements.txt --python-version 3.11

clean: stop  ## stop the services and delete .state (data zones, MLflow, Airflow's database, logs)
	rm -rf .state

# The production stack (docker-compose.yaml; docs/production.md).
secrets:  ## generate the stack's credentials into .env (mode 0600); adds missing ones, never changes a set one
	$(PYTHON) -m include.credentials generate

image:  ## build the stack's image, tagged with the git commit its models record (needs .env: make secrets)
	LOOP_GIT_COMMIT=$$(git rev-parse HEAD)$$(git diff --quiet HEAD -- || echo -dirty) docker compose build
