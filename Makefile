# Chinese customer-service inference platform. Start with: make run   |   make test
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data
REPO   ?= model_repository
HOST   ?= 127.0.0.1
WORKER_PORT ?= 8001
GATEWAY_PORT ?= 8000
WORKER_PROCESSES ?= 1
PROMETHEUS_PORT ?= 9090
# On AMD CPUs MKL picks slow kernels unless told otherwise (halves training step time here).
export MKL_DEBUG_CPU_TYPE ?= 5
export PYTHONUNBUFFERED := 1
export PYTHONWARNINGS ?= ignore
export GLOG_minloglevel ?= 2

.PHONY: help setup run test test-fast lint models benchmarks eval-faq eval-chat faq-thresholds bench bench-runner bench-worker bench-int8 bench-faq bench-gateway pretrain default-data locks clean dashboards rules-check observe chart-check k8s canary-demo load reliability

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## create .venv and install the pinned dev set (serving + training + dev)

$(VENV)/.installed: pyproject.toml requirements/dev.lock
	@echo ">> setting up $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==0.13.9
	$(VENV)/bin/uv pip install -p $(PY) -q -r requirements/dev.lock
	$(VENV)/bin/uv pip install -p $(PY) -q --no-deps -e .
	@touch $@

SHIPPED ?= models/shipped
$(REPO)/.built: | $(VENV)/.installed
	@if [ -d $(SHIPPED)/intent ]; then \
	    echo ">> $(REPO)/ has no models: copying the committed defaults from $(SHIPPED)/ ('make models' retrains them)"; \
	    mkdir -p $(REPO) && cp -R $(SHIPPED)/intent $(SHIPPED)/sentiment $(SHIPPED)/faq $(REPO)/ && touch $@; \
	else $(MAKE) models; fi

run: setup $(REPO)/.built ## set up, build the default models if missing, run worker + FAQ store (demo KB) + gateway on $(HOST):$(GATEWAY_PORT) (Ctrl-C stops all)
	@$(PY) -m services.runtime.status --repository $(REPO)
	$(PY) -m services.stack --repository $(REPO) --host $(HOST) --port $(GATEWAY_PORT) --worker-port $(WORKER_PORT) --worker-processes $(WORKER_PROCESSES)

test: setup ## run the test suite
	$(PY) -m pytest -q

test-fast: setup ## unit tests only (no model training)
	$(PY) -m pytest -q -m "not slow"

lint: setup ## ruff
	$(VENV)/bin/ruff check services models export bench tests grafana observe helm
	$(VENV)/bin/ruff format --check services models export bench tests grafana observe helm

models: setup ## train, evaluate and export intent / sentiment / faq into $(REPO)/ (about 15-20 min on 2 cores)
	$(PY) -m models.defaults --repository $(REPO)
	@touch $(REPO)/.built

benchmarks: setup ## train + export + dev-evaluate one model per benchmark dataset into benchmark_repository/ (DATA=../shared/data)
	$(PY) -m models.benchmarks --data $(DATA) --repository benchmark_repository

eval-faq: setup ## dense vs BM25 vs hybrid FAQ retrieval through milvus-lite: make eval-faq DATA=pairs.jsonl [MODEL=dir]
	$(PY) -m services.faq.evaluate --data $(DATA) $(if $(MODEL),--model $(MODEL))

eval-chat: setup $(REPO)/.built ## the labelled chat set (data/chat_eval) through the local stack: answer / hand-over rates + intent confusion (POLICY=file, LABEL=name)
	$(PY) -m bench.eval_chat --repository $(REPO) $(if $(POLICY),--policy $(POLICY)) $(if $(LABEL),--label $(LABEL)) $(if $(URL),--url $(URL))

faq-thresholds: setup ## fit the answer confidence of the serving FAQ encoder and choose its answer/suggest thresholds (KB + queries_dev, tuned on data/chat_eval)
	$(PY) -m services.faq.thresholds --model $(REPO)/faq --intent $(REPO)/intent --tune data/chat_eval/chat_dev.jsonl --write

bench: bench-runner bench-worker bench-faq bench-gateway ## every benchmark below

bench-runner: setup $(REPO)/.built ## engine only: Paddle Inference oneDNN vs plain CPU, batch 1/8/32
	$(PY) -m bench.runner_bench --repository $(REPO)

bench-worker: setup $(REPO)/.built ## naive one-at-a-time server vs batching worker (vs onnxruntime) at concurrency 1/8/32/64
	$(PY) -m bench.worker_bench --repository $(REPO)

bench-int8: setup ## INT8 post-training quantisation vs FP32 of a classifier checkpoint (CHECKPOINT=runs/defaults/intent, from make models)
	$(PY) -m bench.int8_ptq --checkpoint $(or $(CHECKPOINT),runs/defaults/intent)

bench-faq: setup ## FAQ search p50/p99/qps at 1k/10k/100k entries: milvus-lite vs a real Milvus 2.3.5 on loopback
	$(PY) -m bench.faq_bench

bench-gateway: setup $(REPO)/.built ## /v1/chat closed loop at concurrency 8/32/64 on the local stack (URL=... for a running one)
	$(PY) -m bench.gateway_bench --repository $(REPO) $(if $(URL),--url $(URL))

load: setup $(REPO)/.built ## knee of the local stack under the real mix (chat 80 / FAQ 15 / admin 5 %) + 10-min soak at 80 % of it -> docs/reliability.md (~20 min)
	$(PY) -m bench.load --repository $(REPO)

reliability: setup $(REPO)/.built ## faults under load (engine / worker killed, worker hung, store restart, Redis down, hot reload, canary rollback, nftables cut between network namespaces; root) -> docs/reliability.md (~12 min)
	$(PY) -m bench.reliability --repository $(REPO)

PRETRAIN_STEPS ?= 5000
pretrain: setup ## reproduce models/pretrained/ernie-tiny-cs (MLM on every train split under DATA; ~30 min; resumes where it stopped)
	$(PY) -m models.pretrain --data $(DATA) --out models/pretrained/ernie-tiny-cs --steps $(PRETRAIN_STEPS)

default-data: setup ## regenerate the shipped sentiment / FAQ-pair training data from DATA
	$(PY) -m models.default_data --data $(DATA) --out data

dashboards: setup ## regenerate grafana/dashboards/*.json and the chart's copies (helm/files/dashboards/)
	$(PY) -m grafana.generate

rules-check: setup ## promtool check + test of the alert rules, runbooks, dashboards' PromQL and metric names
	$(PY) -m observe.check

observe: setup ## real Prometheus on $(HOST):$(PROMETHEUS_PORT) scraping `make run`'s stack with the chart's rules (Ctrl-C stops it)
	$(PY) -m observe.prometheus --host $(HOST) --port $(PROMETHEUS_PORT) --worker $(HOST):$(WORKER_PORT)

canary-demo: setup $(REPO)/.built ## two canary rollouts of intent on the local stack under traffic: retrained v2 promoted, label-permuted v3 rolled back (~4 min)
	$(PY) -m services.canary.demo --source $(REPO)

CHECKOV_VENV ?= .tools/checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov

$(CHECKOV): ## checkov conflicts with the dev set: it gets its own pinned venv
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --disable-pip-version-check checkov==3.3.30

chart-check: setup $(CHECKOV) ## helm lint + render every helm/ci scenario + kubernetes-validate + checkov + k8s/ drift
	$(PY) helm/ci/check.py --checkov $(CHECKOV)

k8s: setup ## re-render k8s/ from the chart with the reference production profile (helm/ci/production.yaml)
	$(PY) helm/ci/check.py --write-k8s

locks: ## re-resolve requirements/*.lock from pyproject.toml
	uv pip compile -q pyproject.toml --python-version 3.11 --extra serving -o requirements/serving.lock
	uv pip compile -q pyproject.toml --python-version 3.11 --extra serving --extra ops --extra training --extra dev -o requirements/dev.lock

clean: ## remove the venv and built models
	rm -rf $(VENV) $(REPO) benchmark_repository runs
