# predserve: `make run` to serve, `make test` to check everything. Both work from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/*.proto)
PROTO_OUT := $(PROTO_SRC:.proto=_pb2.py)
HOST ?= 127.0.0.1
PORT ?= 50051

.PHONY: run test lint soak restart-test demo proto report bench bench-compare bench-replicas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

protos/%_pb2.py: protos/%.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $<

proto: $(PROTO_OUT)

run: $(PROTO_OUT)
	@echo "predserve will listen on $(HOST):$(PORT). Try, in another shell:"
	@echo "  $(VENV)/bin/predserve --target $(HOST):$(PORT) ingest --dataset iris --builtin iris"
	@echo "  $(VENV)/bin/predserve --target $(HOST):$(PORT) train --model-type iris_classifier --algorithm logistic_regression --dataset iris"
	@echo "  $(VENV)/bin/predserve --target $(HOST):$(PORT) predict --model-type iris_classifier --row 5.1,3.5,1.4,0.2 --proba"
	$(PY) -m server --host $(HOST) --port $(PORT)

lint: $(PROTO_OUT)
	$(VENV)/bin/ruff check server client tests scripts bench
	$(VENV)/bin/mypy server client bench

test: lint
	$(PY) -m pytest -q

SOAK_SECONDS ?= 120
soak: $(PROTO_OUT)
	PREDSERVE_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q -s tests/test_soak.py

restart-test: $(PROTO_OUT)
	$(PY) scripts/restart_story.py --mode check

demo: $(PROTO_OUT)
	$(PY) scripts/restart_story.py --mode demo

report: $(PROTO_OUT)
	$(PY) scripts/make_report.py

# Predict requests/s against 1 and 2 replicas (shared PostgreSQL registry when installed), round robin.
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

# Installs MLServer into bench/.venv-mlserver on first use, then drives both servers in alternation.
bench-compare: $(PROTO_OUT) $(BENCH_STAMP)
	$(PY) -m bench compare $(BENCH_ARGS)

clean:
	rm -rf $(VENV) bench/.venv-mlserver protos/*_pb2*.py protos/*_pb2*.pyi .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
	find models -type f ! -name .gitkeep -delete
	rm -f db/predictions.db db/predictions.db-*
