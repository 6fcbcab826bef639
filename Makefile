# ct-pipeline: `make demo` runs the whole loop on this machine; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CTPIPE_HOME ?= $(CURDIR)/.ctpipe
export AIRFLOW_HOME ?= $(CTPIPE_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: help venv containers monitoring demo test test-unit lint typecheck stop clean bench-gate bench bench-drift

help:
	@echo "make demo   - set up and run the whole continuous-training loop locally"
	@echo "make test   - set up and run the tests"
	@echo "make test-unit - the unit tests only (tests/unit: no processes, servers, stores, git or network)"
	@echo "make stop   - stop the local serving stack started by the demo"
	@echo "make monitoring - install prometheus, alertmanager, pushgateway (Debian packages; demo/test do it)"
	@echo "make containers - podman + base image + local registry for the model-service images (demo/test do it)"
	@echo "make lint   - ruff check + ruff format --check over the whole tree"
	@echo "make typecheck - mypy on ct_pipeline (make test runs it first)"
	@echo "make bench-gate - false-promotion rate and power of the gate (about 10 minutes)"
	@echo "make bench-drift - false-alarm rate and power of the drift monitors at n=200..100k (about 10 minutes)"
	@echo "make bench  - serving throughput/latency: ceiling vs model server vs gateway path, + soak (about 10 minutes; needs wrk)"
	@echo "make clean  - remove local state (.ctpipe) and the venv"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x $(BIN)/python || uv venv --quiet --python $(PYTHON) $(VENV)
	uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	@# helm-sdkpy (Helm v4 as a library, for the chart lint/render tests) declares Python >= 3.12 but works on 3.11.
	uv pip install --quiet --python $(BIN)/python --python-version 3.12 --no-deps 'helm-sdkpy>=0.1.32'
	@touch $(STAMP)

# Container engine for the model-service images: podman + a locally built base image + a registry on
# 127.0.0.1:5000 (scripts/containers-setup.sh; first run ~3-4 min: apt + debootstrap + base image, then ~1 s).
# Never fails make: without it the demo packages Bentos only and says why; tests/integration/test_image.py fails saying why.
containers:
	@bash scripts/containers-setup.sh >/dev/null || echo "make: no container engine here (reason above): Bentos only, no images"

# Prometheus (+ promtool), Alertmanager, Pushgateway from Debian (scripts/monitoring-setup.sh; ~10 s once, then
# instant; silent on success). The local alerting stack runs them on 127.0.0.1 (ct_pipeline/adapters/local_monitoring.py).
monitoring:
	@bash scripts/monitoring-setup.sh

demo: venv containers monitoring
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

stop: venv
	$(BIN)/ctpipe stop

test: venv containers monitoring typecheck
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

bench-gate: venv
	$(BIN)/python scripts/bench_gate.py

bench-drift: venv
	$(BIN)/python scripts/bench_drift.py

bench: venv
	@command -v wrk >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
		&& apt-get install -y -qq wrk >/dev/null; } || { echo "make bench needs wrk (apt-get install wrk)"; exit 1; }
	$(BIN)/python scripts/bench.py

test-unit: venv
	$(BIN)/pytest -q -p no:cacheprovider -m unit

LINTED := ct_pipeline dags serving tests scripts .github/workflows/scripts

lint: venv
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: venv
	$(BIN)/mypy

clean: stop
	-@bash scripts/containers-setup.sh --stop
	rm -rf $(CTPIPE_HOME) $(VENV)
