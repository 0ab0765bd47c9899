# fraud-mlops — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_COMPILE_BYTECODE := 1
export BENTOML_HOME ?= $(CURDIR)/.bentoml
# uv lives in a venv of its own (.uv/): the system Python (PEP 668) is never touched; uv then
# builds .venv from uv.lock with that same interpreter and never downloads one.
PYTHON ?= python3
BOOT := .uv
UV := $(BOOT)/bin/uv
export UV_PYTHON_DOWNLOADS := never
RUN := $(UV) run --no-sync
DATA ?= data/demo/transactions
SOAK_MINUTES ?= 30
# the first champion's grid when the soak finds none
SOAK_GRID ?= quick
SCALES ?= 1 10 50

.PHONY: help install tools run test test-fast lint format simulate simulate-full train evaluate drift import-bento build export serve status loadtest soak bench bench-offline dashboards monitor monitor-stop airflow airflow-stop stack-up stack-test clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}'

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
		{ echo "fraud-mlops needs Python 3.11 as $(PYTHON) (make PYTHON=/path/to/python3.11)"; exit 1; }
	@rm -rf $(BOOT); $(PYTHON) -m venv $(BOOT) >/dev/null 2>&1 || { rm -rf $(BOOT); \
		echo "installing python3-venv (apt): the system Python has no venv module"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends python3-venv >/dev/null && $(PYTHON) -m venv $(BOOT); }
	$(BOOT)/bin/python -m pip install --quiet --disable-pip-version-check uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	@touch $@

install: .venv/.synced ## Install everything (uv, locked deps, bytecode compiled)

# Debian packages the tests run for real: a command each comes with, and its package.
TOOLS := prometheus:prometheus promtool:prometheus prometheus-alertmanager:prometheus-alertmanager \
	amtool:prometheus-alertmanager redis-server:redis-server \
	/usr/lib/postgresql/*/bin/pg_ctl:postgresql java:openjdk-17-jre-headless \
	chromium:chromium chromedriver:chromium-driver
tools: ## Debian packages the tests use: Prometheus, Alertmanager, PostgreSQL, Redis, Java (Spark), Chromium (apt)
	@missing=""; for t in $(TOOLS); do bin=$${t%%:*}; \
		command -v $$bin >/dev/null 2>&1 || ls $$bin >/dev/null 2>&1 || missing="$$missing $${t##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		pkgs=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); echo "installing $$pkgs(apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$pkgs >/dev/null; \
	fi

run: install ## Main job: demo data if none, train if no champion, import, serve on 127.0.0.1:8080
	$(RUN) fraudops run

test: install tools ## The whole suite: private PostgreSQL + Redis (FRAUD_TEST_SERVICES=machine: the running ones)
	$(RUN) pytest -q

FAST := not slow and not server and not postgres and not redis
test-fast: install tools ## Unit tests: no server, PostgreSQL or Redis started (~3 min)
	$(RUN) pytest -q -m "$(FAST)"

test-isolated: install tools ## test-fast in a network namespace: proves it needs no PostgreSQL/Redis (root)
	unshare -n bash -c 'ip link set lo up && $(RUN) pytest -q -p no:cacheprovider -m "$(FAST)"'

lint: install ## ruff + mypy; the CI workflows with actionlint and zizmor (offline)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	$(RUN) actionlint
	$(RUN) zizmor --offline --quiet .github/workflows

format: install ## Format the code
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

simulate: install ## Simulate the demo dataset (2,500 customers, 100 days)
	$(RUN) fraudops simulate --customers 2500 --terminals 5000 --days 100 --out data/demo

simulate-full: install ## Simulate the handbook's full scale (5,000 customers, 183 days) into data/full
	$(RUN) fraudops simulate --out data/full

train: install ## Train, log to MLflow, register and gate (DATA=path)
	$(RUN) fraudops train --data $(DATA)

evaluate: install ## Handbook-protocol evaluation to reports/evaluation.json (DATA=path)
	$(RUN) fraudops evaluate --data $(DATA) --protocol handbook --json reports/evaluation.json

drift: install ## Drift report of the data's last 7 days vs the champion (DATA=path) -> reports/drift
	$(RUN) fraudops drift --data $(DATA) --last-days 7

import-bento: install ## Import the MLflow champion into the Bento store
	$(RUN) fraudops import-bento

build: import-bento ## bentoml build from bentofile.yaml
	$(RUN) bentoml build

export: build ## Export the latest Bento to bentos/
	$(RUN) bentoml export fraud_detector:latest bentos/

serve: install ## Serve the champion from the Bento store on 127.0.0.1:8080
	$(RUN) fraudops serve

status: install ## Registered versions, aliases and Bento store
	$(RUN) fraudops status

LOAD_USERS ?= 50
LOAD_TIME ?= 60s
HOST ?= http://127.0.0.1:8080
loadtest: install ## Locust, headless, against a running service (LOAD_USERS, LOAD_TIME, HOST)
	@mkdir -p loadtest-results
	$(RUN) locust -f tests/load/locustfile.py --headless -u $(LOAD_USERS) -r 10 -t $(LOAD_TIME) \
		--host $(HOST) --csv loadtest-results/run --only-summary

dashboards: install ## Regenerate the Grafana dashboards JSON from monitoring/grafana/generate.py
	$(RUN) python monitoring/grafana/generate.py

MON := .monitoring
monitor: tools ## Prometheus (127.0.0.1:9090) + Alertmanager (127.0.0.1:9093) beside `make run`
	@mkdir -p $(MON)
	@if [ -f $(MON)/prometheus.pid ] && kill -0 $$(cat $(MON)/prometheus.pid) 2>/dev/null; then \
		echo "already running (make monitor-stop)"; exit 0; fi; \
	setsid prometheus --config.file=monitoring/prometheus/prometheus.yml \
		--storage.tsdb.path=$(MON)/prometheus --web.listen-address=127.0.0.1:9090 \
		>$(MON)/prometheus.log 2>&1 & echo $$! >$(MON)/prometheus.pid; \
	setsid prometheus-alertmanager --config.file=monitoring/alertmanager/alertmanager.yml \
		--storage.path=$(MON)/alertmanager --web.listen-address=127.0.0.1:9093 \
		--cluster.listen-address= >$(MON)/alertmanager.log 2>&1 & echo $$! >$(MON)/alertmanager.pid; \
	for url in http://127.0.0.1:9090/-/ready http://127.0.0.1:9093/-/ready; do \
		for i in $$(seq 60); do curl -sf $$url >/dev/null && break; sleep 0.5; done; \
		curl -sf $$url >/dev/null || { echo "not ready: $$url (see $(MON)/*.log)"; exit 1; }; \
	done; \
	echo "Prometheus   http://127.0.0.1:9090  (alerts: /alerts, targets: /targets)"; \
	echo "Alertmanager http://127.0.0.1:9093  (logs in $(MON)/; stop with make monitor-stop)"

monitor-stop: ## Stop what `make monitor` started
	@for svc in prometheus alertmanager; do \
		if [ -f $(MON)/$$svc.pid ]; then kill $$(cat $(MON)/$$svc.pid) 2>/dev/null || true; \
		rm -f $(MON)/$$svc.pid; echo "stopped $$svc"; fi; \
	done

airflow: install ## Airflow 3 on 127.0.0.1:8081 (api-server, scheduler, dag-processor, triggerer; PostgreSQL)
	dags/local_airflow.sh start

airflow-stop: ## Stop what `make airflow` started
	dags/local_airflow.sh stop

stack-up: ## The Compose stack with registry access: first champion image, then everything (.env)
	docker compose run --rm fraud-bootstrap
	docker compose up -d --wait

stack-test: install ## The Compose stack on a local Docker engine, end to end (~15-30 min; root)
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || { apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null; }
	$(RUN) pytest -q -s -p no:cacheprovider tests/stack

clean: ## Remove generated data, MLflow store and Bento store (keeps the venvs)
	rm -rf data/demo mlruns .bentoml reports

soak: install tools ## The service at 500 req/s for SOAK_MINUTES (30) with Redis and the decision log on PostgreSQL, watched a minute at a time -> reports/soak/
	$(RUN) fraudops run --no-serve --grid $(SOAK_GRID)
	$(RUN) python -m tests.soak.run_soak --minutes $(SOAK_MINUTES)

bench-offline: install tools ## The offline half, local against Spark, at 1x, 10x and 50x the handbook's volume (SCALES="1 10 50") -> reports/bench-offline/
	$(RUN) python -m tests.bench.offline --scales $(SCALES)

bench: install ## Side-by-side benchmark (fraud-api, no-op BentoML, FastAPI seed, mlflow serve)
	@command -v wrk >/dev/null && command -v hey >/dev/null || apt-get install -y --no-install-recommends wrk hey
	$(RUN) fraudops run --no-serve
	$(RUN) python -m tests.bench.run_bench
	$(RUN) python -m tests.bench.rules_cost  # the decision rules: µs a transaction, 50 rules
