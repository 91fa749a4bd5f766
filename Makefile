# rgalign: `make run` runs the whole nightly DAG on the embedded defaults; `make test` runs the tests.
# Both install what they need first (a .venv from the pinned requirements.txt).
SHELL := /bin/bash
PY := .venv/bin/python
VENV_BIN := $(CURDIR)/.venv/bin
DS ?= $(shell date -u -d yesterday +%F)

export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM := 4
export AIRFLOW__API__HOST := 127.0.0.1
export PATH := $(VENV_BIN):$(PATH)
export PYTHONPATH := $(CURDIR)
export HF_HUB_OFFLINE := 1
export SPARK_LOCAL_IP := 127.0.0.1
export DS_ACCELERATOR := cpu

.PHONY: setup run task test ui airflow airflow-init bench clean help
help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: .venv/.installed  ## create .venv and install the pinned requirements (idempotent)

.venv/.installed: requirements.txt
	@command -v java >/dev/null || { echo "Java 17+ is needed by Spark: sudo apt-get install -y openjdk-17-jre-headless"; exit 1; }
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

.airflow/.initialised: .venv/.installed
	mkdir -p .airflow
	airflow db migrate >/dev/null
	airflow pools set rgalign_heavy 1 "Spark and training tasks: one at a time on a small box" >/dev/null
	touch $@

airflow-init: .airflow/.initialised  ## create the Airflow SQLite DB and the rgalign_heavy pool

run: setup airflow-init  ## run the whole nightly DAG for DS (default: yesterday) on the simulator
	airflow dags test rgalign_nightly $(DS)
	@echo "Done. Lake: $(CURDIR)/lake   MLflow runs: make ui  (experiment 'rgalign')"

task: setup airflow-init  ## rerun one task alone: make task TASK=extract_features DS=2026-11-21
	@test -n "$(TASK)" || { echo "usage: make task TASK=<task_id> DS=YYYY-MM-DD"; exit 2; }
	airflow tasks test rgalign_nightly $(TASK) $(DS)

test: setup  ## run the test suite (unit + end-to-end on the real engines)
	$(PY) -m pytest -q tests

ui: setup  ## MLflow UI on http://127.0.0.1:5000
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

airflow: setup airflow-init  ## Airflow standalone (UI on http://127.0.0.1:8080; password in .airflow/)
	airflow standalone

bench: setup  ## benchmarks: writes bench/results/*.json and BENCHMARKS.md
	$(PY) -m bench.run

clean:  ## remove the lake, MLflow runs, Airflow home and benchmark scratch (keeps .venv)
	rm -rf lake mlruns .airflow bench/work spark-warehouse
