# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# torch goes in first, on its own: installed as a dependency of transformers/trl it would be
# resolved to a multi-GB CUDA build. Override TORCH_SPEC / TORCH_PIP_ARGS on a GPU box.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := true

.PHONY: install demo test ui lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

install: $(BIN)/.installed $(DAGSTER_HOME)/dagster.yaml

demo: install
	$(BIN)/postforge demo

test: install
	$(BIN)/pytest -q

ui: install
	$(BIN)/dagster dev -m pipelines.definitions -h 127.0.0.1 -p 3000

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf outputs .dagster_home
