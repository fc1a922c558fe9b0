# One entry point for users and CI. `make test` is the test command; CI runs it
# through .ci/run on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Installed: the project and what it needs to run (make run); the development tools over
# it (make setup, make test).
RUN_STAMP := $(VENV)/.runtime
STAMP     := $(VENV)/.installed
# The official AsyncAPI JSON Schemas (npm @asyncapi/specs), which the tests validate
# docs/asyncapi.yaml against; npm keeps its download cache in ~/.npm.
SPECS  := tools/asyncapi
NODE_STAMP := $(SPECS)/node_modules/.package-lock.json

.PHONY: setup lint deploy-check test test-fast drills run contract bench-peers clean

# Bytecode is cached (in __pycache__, ignored by git) even where the environment says
# not to: without it every run compiles the project and pytest rewrites every test
# module again, 3 of make test-fast's 10 s.
unexport PYTHONDONTWRITEBYTECODE

setup: $(STAMP) $(NODE_STAMP)

# Reinstall only when the dependency pins or the project metadata change.
$(RUN_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(NODE_STAMP): $(SPECS)/package.json $(SPECS)/package-lock.json
	npm ci --prefix $(SPECS) --ignore-scripts --no-audit --no-fund --loglevel=error

lint: setup
	$(BIN)/ruff check processor tests benchmarks deploy
	$(BIN)/ruff format --check processor tests benchmarks deploy
	$(BIN)/mypy --strict processor tests benchmarks deploy/check.py

# deploy/ rendered and checked against the Kubernetes, Strimzi, KEDA and Compose schemas,
# and the Dockerfile linted, all offline. The first run builds kustomize (pinned in
# deploy/check.py) with `go install` into ~/.cache/processor/tools; later runs reuse it.
deploy-check: setup
	$(BIN)/python deploy/check.py

# Four pytest workers on two cores: most of the suite waits on brokers and processes.
# Each worker starts its own broker; tests that need their own start theirs.
test: lint deploy-check
	$(BIN)/pytest -n 4 --dist worksteal -m "not drill"

# The fast loop: the unit tests, no broker, on two workers that steal each other's
# queued tests at the end, the property tests on a fifth of their examples; those that
# start a Python process of their own (marked slow) run in make test.
test-fast: setup
	PROCESSOR_TEST_FAST=1 $(BIN)/pytest tests/unit -m "not slow" -n 2 --dist worksteal

# The drills too long for make test (marked drill), each with its figures printed: the
# outage drills at the length of real outages (10 s to 5 minutes) and the broker frozen
# past the transaction timeout, with the default timeouts (make test runs shorter ones
# with shortened timeouts); each coordinator's broker of three killed; a rebalance
# every 10 s for two minutes. About an hour.
drills: setup
	PROCESSOR_DRILL_SCALE=real $(BIN)/pytest -s -m drill tests

# The whole pipeline on this machine: Kafka, topics, ingress on :8080, two workers.
# It needs the runtime dependencies only; make setup adds the development tools.
run: $(RUN_STAMP)
	$(BIN)/processor dev

# The subscriber's contract for the default config.yaml, regenerated from the code; it
# refuses to overwrite docs/contract.json with a change that breaks subscribers.
CONTRACT_ENV := env -i PATH="$$PATH"
contract: setup
	test ! -f docs/contract.json || $(CONTRACT_ENV) $(BIN)/processor schema --check docs/contract.json
	$(CONTRACT_ENV) $(BIN)/processor schema > docs/contract.json.new
	mv docs/contract.json.new docs/contract.json
	$(CONTRACT_ENV) $(BIN)/processor schema --asyncapi > docs/asyncapi.yaml.new
	mv docs/asyncapi.yaml.new docs/asyncapi.yaml

# The routing job on Quix Streams, FastStream, bare aiokafka and bare confluent-kafka beside
# the worker, on one broker, outputs checked (benchmarks/peers/run.py prints the table).
# Each peer gets a virtualenv of its own from its pinned file in benchmarks/peers/requirements/,
# remade when that file changes; none of it is a project dependency.
# Arguments: make bench-peers PEERS_ARGS='--records 20000 --rounds 1'
PEERS      := aiokafka confluent quix faststream
PEER_VENVS := benchmarks/peers/.venvs
PEERS_ARGS ?=

$(PEER_VENVS)/%/.installed: benchmarks/peers/requirements/%.txt
	rm -rf $(PEER_VENVS)/$*
	$(PYTHON) -m venv $(PEER_VENVS)/$*
	$(PEER_VENVS)/$*/bin/python -m pip install --quiet --no-deps -r $<
	touch $@

bench-peers: setup $(PEERS:%=$(PEER_VENVS)/%/.installed)
	$(BIN)/python benchmarks/peers/run.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) $(PEER_VENVS) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info \
	       $(SPECS)/node_modules
