# The two commands of the README: `make demo` and `make test`.
# Both create .venv and install what they need on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test test-min lint mutation bench bench-smoke chaos soak check-config schema clean system-deps \
	js js-test node-deps

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

# What the tests need from Debian: nginx and promtool (prometheus) for the deploy
# files, redis-server for the many-instance tests (the fixtures start their own
# on free ports; the service the package enables is not used), chromium for the browser tests (driven by
# Playwright for Python; never `playwright install`), and node and npm for the
# browser client's package and its React example (skipped when already there).
SYSTEM_PACKAGES := chromium nginx prometheus redis-server
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	@$(MAKE) --no-print-directory $(JS)/node_modules/.package-lock.json $(JS_EXAMPLE)/node_modules/.package-lock.json

# The browser client is the npm package in clients/js (TypeScript). The bridge
# serves its build from bridge/static/, committed, so `pip install` needs no Node.
# `make js` rebuilds and syncs it there after a change to clients/js/src;
# `make js-test` runs its unit tests, type-checks the seed's usage and fails when
# bridge/static is stale against the source.
JS := clients/js
JS_EXAMPLE := $(JS)/examples/react

node-deps:
	@command -v npm >/dev/null 2>&1 || { echo "installing: nodejs npm"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }

# npm ci when node_modules is missing or older than the lock file
%/node_modules/.package-lock.json: %/package-lock.json | node-deps
	cd $* && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

js: $(JS)/node_modules/.package-lock.json
	cd $(JS) && npm run --silent build && npm run --silent sync

js-test: $(JS)/node_modules/.package-lock.json
	cd $(JS) && npm test --silent && npm run --silent check

demo: $(STAMP)
	$(VENV)/bin/session-bridge demo

lint: $(STAMP)
	$(VENV)/bin/ruff check bridge tests bench
	$(VENV)/bin/ruff format --check bridge tests bench
	$(VENV)/bin/mypy bridge
	$(VENV)/bin/lint-imports --no-cache

# The browser client's tests (js-test), then every test, with branch coverage; bridge/core and bridge/protocol must stay at 100 %.
# Then a short smoke of each benchmark, the mutation gate on core and protocol, and
# the tests on the lowest dependency versions pyproject.toml admits.
test: $(STAMP) system-deps
	$(MAKE) --no-print-directory js-test
	$(PY) -m pytest --cov=bridge --cov-report= $(PYTEST_ARGS)
	$(PY) -m coverage report --include='bridge/core/*,bridge/protocol/*' --fail-under=100
	$(MAKE) bench-smoke
	$(MAKE) mutation
	$(MAKE) test-min

# Mutation testing of bridge/core and bridge/protocol (config: [tool.mutmut] in
# pyproject.toml; about two minutes on two cores). Always a fresh run: mutmut keeps
# old verdicts in mutants/ even when tests change. Fails below a 97 % kill rate or on
# a survivor not listed, with its reason, in tests/mutation/survivors.txt.
mutation: $(STAMP)
	rm -rf mutants && mkdir mutants
	@echo "mutmut run (log: mutants/run.log)"
	@time $(VENV)/bin/mutmut run > mutants/run.log 2>&1 || { tr '\r' '\n' < mutants/run.log | tail -n 60; exit 1; }
	$(PY) tests/mutation/gate.py

# The runtime dependencies at the lowest versions pyproject.toml admits
# (tests/deps/floors.py): the transports, the Redis backplane and the hardening
# tests run on them, so a floor can never admit a version the code cannot use.
MIN_VENV := .venv-min
test-min: system-deps
	@test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) tests/deps/floors.py > $(MIN_VENV)/floors.txt
	$(MIN_VENV)/bin/python -m pip install --quiet -c $(MIN_VENV)/floors.txt -e '.[test]'
	$(MIN_VENV)/bin/python tests/deps/floors.py --check
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/e2e tests/hardening \
		tests/backplane/test_redis_backplane.py \
		--ignore=tests/e2e/test_spreading.py --ignore=tests/e2e/test_admin_live.py

bench: $(STAMP)
	$(PY) bench/fanout.py
	$(PY) bench/transports.py
	$(PY) bench/passthrough.py
	$(PY) bench/upstream_load.py
	$(PY) bench/upstream_load.py --mode queue
	$(PY) bench/intercept.py

bench-smoke: $(STAMP)
	$(PY) bench/fanout.py --smoke
	$(PY) bench/fanout.py --smoke --servers bridge --backplane redis --instances 2
	$(PY) bench/transports.py --smoke
	$(PY) bench/passthrough.py --smoke
	$(PY) bench/upstream_load.py --smoke
	$(PY) bench/intercept.py --smoke

# The chaos test at a larger scale than CI's (120 clients, 60 s).
chaos: $(STAMP)
	CHAOS_CLIENTS=120 CHAOS_SECONDS=60 $(PY) -m pytest -q -s tests/chaos -p no:cacheprovider

# The leak soak at a larger scale than CI's (30,000 cycles).
soak: $(STAMP)
	SOAK_CYCLES=30000 $(PY) -m pytest -q -s tests/soak -p no:cacheprovider

schema: $(STAMP)
	$(VENV)/bin/session-bridge schema --output config/bridge.schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov .hypothesis
	rm -rf $(JS)/node_modules $(JS)/dist $(JS)/build $(JS_EXAMPLE)/node_modules $(JS_EXAMPLE)/dist
