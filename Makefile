# Model Launcher developer commands. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run demo reset test lint fmt typecheck chaos bench deploy clean

venv: $(STAMP) node_modules/.bin/azurite-blob

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

node_modules/.bin/azurite-blob: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Run the whole pipeline locally: Azurite, the ACI emulator, the local Functions host.
run: venv
	$(PY) -m localdev.run $(RUN_ARGS)

## The same stack, scripted: drop a sample folder (with one bad file) and check the outcome.
## It runs on its own ports and in-memory storage (beside `make run` if that is up).
demo: venv
	$(PY) -m localdev.run --demo $(RUN_ARGS)

## Forget local state (Azurite's blobs, the emulator's groups, logs); keeps settings and installs.
STATE_DIR ?= .localdev
reset:
	@if [ -f $(STATE_DIR)/run.pid ] && kill -0 "$$(cat $(STATE_DIR)/run.pid)" 2>/dev/null; then \
		echo "make run is up (pid $$(cat $(STATE_DIR)/run.pid)): stop it with Ctrl-C first" >&2; exit 1; fi
	rm -rf $(STATE_DIR)
	@echo "local state cleared ($(STATE_DIR)); local.settings.json, .venv and node_modules kept"

## Lint, type-check and run every test (Azurite and the ACI emulator start by themselves).
test: venv lint typecheck
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: venv
	$(VENV)/bin/mypy .

## Reliability suite at full trial counts (a short seeded version runs inside `make test`).
chaos: venv
	$(PY) -m scripts.chaos

## Benchmark: idle cost, claim speed vs the one-by-one baseline, scale, launch, sweep.
bench: venv
	$(PY) -m scripts.bench

## Deploy to Azure (needs the az CLI and a subscription): see docs/deployment.md.
deploy:
	scripts/deploy.sh

## Everything generated, installs included (`make reset` clears only the local state).
clean:
	rm -rf $(VENV) node_modules .localdev .pytest_cache .mypy_cache .ruff_cache
