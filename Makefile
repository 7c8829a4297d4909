# predserve: `make run` to serve, `make test` to check everything. Both work from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/*.proto)
PROTO_OUT := $(PROTO_SRC:.proto=_pb2.py)
# `make run` passes the server no flag of its own, so PREDSERVE_* variables in the environment apply.
# `make run HOST=0.0.0.0 PORT=6000` sets PREDSERVE_HOST and PREDSERVE_PORT; RUN_ARGS adds any flags.
ifeq ($(origin HOST),command line)
export PREDSERVE_HOST := $(HOST)
endif
ifeq ($(origin PORT),command line)
export PREDSERVE_PORT := $(PORT)
endif
RUN_ARGS ?=
RUN_TARGET = $(or $(PREDSERVE_HOST),127.0.0.1):$(or $(PREDSERVE_PORT),50051)

.PHONY: docs run recover test test-quick lint soak restart-test walkthrough demo proto report bench bench-compare bench-replicas bench-scale dashboard clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# scripts/generate_protos.py: the bindings import each other through the package (from predserve.protos import ...).
protos/%_pb2.py: protos/%.proto $(STAMP)
	$(PY) scripts/generate_protos.py $<

proto: $(PROTO_OUT)

run: $(PROTO_OUT)
	@echo "predserve will listen on $(RUN_TARGET). Try, in another shell:"
	@echo "  $(VENV)/bin/predserve --target $(RUN_TARGET) ingest --dataset iris --builtin iris"
	@echo "  $(VENV)/bin/predserve --target $(RUN_TARGET) train --model-type iris_classifier --algorithm logistic_regression --dataset iris"
	@echo "  $(VENV)/bin/predserve --target $(RUN_TARGET) predict --model-type iris_classifier --row 5.1,3.5,1.4,0.2 --proba"
	$(PY) -m predserve.server $(RUN_ARGS)

# Records the orphan artifacts of the models directory (a lost registry, a Train killed before its commit).
recover: $(PROTO_OUT)
	$(PY) -m predserve.server recover $(RUN_ARGS)

lint: $(PROTO_OUT)
	$(VENV)/bin/ruff check predserve server client tests scripts bench harness
	$(VENV)/bin/mypy predserve bench harness

# Six pytest processes on two cores: the tests mostly wait on the servers they start (864 tests: 9 min 21 s with six,
# about 12 min with four). --dist loadscope keeps a module's tests in one process, so its shared server starts once.
PYTEST_PARALLEL ?= -n 6 --dist loadscope
test: lint
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

# The inner loop: no lint, and no test marked slow (see the markers in pyproject.toml).
test-quick: $(PROTO_OUT)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_PARALLEL)

SOAK_SECONDS ?= 120
soak: $(PROTO_OUT)
	PREDSERVE_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q -s tests/test_soak.py

restart-test: $(PROTO_OUT)
	$(PY) scripts/restart_story.py --mode check

demo: $(PROTO_OUT)
	$(PY) scripts/restart_story.py --mode demo

# Writes docs/configuration.md's table of server options from their declarations (server/options.py).
docs: $(PROTO_OUT)
	$(PY) scripts/render_options.py

# Runs the typed walkthrough of docs/tables.md against a fresh server and writes its transcript there.
walkthrough: $(PROTO_OUT)
	$(PY) scripts/typed_walkthrough.py --write

report: $(PROTO_OUT)
	$(PY) scripts/make_report.py

# Predict requests/s against 1 and 2 replicas that share only a PostgreSQL registry (when installed) and a bucket
# on a local S3 server, round robin; then the object store's targets (bench/object_store.py).
BENCH_REPLICAS_ARGS ?=
bench-replicas: $(PROTO_OUT)
	$(PY) -m bench.replicas $(BENCH_REPLICAS_ARGS)
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Not part of `make test`: timings, printed as ratios against baselines measured in the same run.
BENCH_ARGS ?=
bench: $(PROTO_OUT) $(BENCH_STAMP)
	$(PY) -m bench run $(BENCH_ARGS)

# How each cost grows with history (1,000 model types, 10,000 sets, ...), as ratios against a small registry.
BENCH_SCALE_ARGS ?=
bench-scale: $(PROTO_OUT) $(BENCH_STAMP)
	$(PY) -m bench.scale $(BENCH_SCALE_ARGS)

# Installs MLServer into bench/.venv-mlserver on first use, then drives both servers in alternation.
bench-compare: $(PROTO_OUT) $(BENCH_STAMP)
	$(PY) -m bench compare $(BENCH_ARGS)

# A real server with --workers 2 under a minute of load, scraped every second: redraws
# docs/observability-dashboard.png and refreshes docs/observability-scrape.txt and the scrape block of docs/observability.md.
dashboard: $(PROTO_OUT) $(BENCH_STAMP)
	$(PY) scripts/render_dashboard.py

clean:
	rm -rf $(VENV) bench/.venv-mlserver protos/*_pb2*.py protos/*_pb2*.pyi .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
	find models -type f ! -name .gitkeep -delete
	rm -f db/predictions.db db/predictions.db-*
