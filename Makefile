# ragturbo — the commands of DESIGN.md. Every target sets up .venv on first use.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 0.0.0.0
PORT ?= 8000
ONNX_DIR ?= out/onnx
TRT_DIR ?= out/trt

.PHONY: setup run test onnx trt bench load docker helm toyworld lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/ragturbo serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

onnx: $(STAMP)
	$(BIN)/ragturbo export onnx --out $(ONNX_DIR)

trt: $(STAMP)
	$(BIN)/ragturbo build trt --onnx $(ONNX_DIR) --out $(TRT_DIR)

bench: $(STAMP)
	$(BIN)/ragturbo bench pipeline --arch sd-turbo --random-weights --batch 1,4,16

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache
