# Two commands on a fresh machine:  `make demo`  and  `make test`  (both run `make setup` first).
PYTHON ?= python3
VENV   ?= .venv
# torch: the build this machine can run (lab/torch_install.py): with an NVIDIA GPU the newest CUDA build
# its driver supports (nvidia-smi), else the CPU build (the one pip already serves, if it holds a +cpu
# wheel, else PyTorch's CPU index). Override: TORCH_VARIANT=cpu|cu126|cu128|cu130 (auto: detect),
# TORCH_INDEX_URL=<an index holding torch==$(TORCH_VERSION)+<variant>>. An installed venv keeps its build:
# after a driver change, `make clean-venv setup`.
TORCH_VERSION   ?= 2.13.0
TORCH_VARIANT   ?= auto
TORCH_INDEX_URL ?=
# exercises run side by side, one process and one thread each (lab run --jobs; default: all cores)
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell { cat pyproject.toml Makefile lab/torch_install.py; echo '$(TORCH_VERSION) $(TORCH_VARIANT) $(TORCH_INDEX_URL)'; } | sha256sum | cut -c1-12)

# OpenClaw (Phases 14, 16) needs Node >= 24.16; machines often carry an older one. A pinned Node 24
# comes from the npm package node-linux-<arch> (the binary inside a registry package) and a pinned
# openclaw is installed with it, both into $(VENV)/node — never globally. See lab/toolchain.py.
NODE_VERSION     ?= 24.22.3
OPENCLAW_VERSION ?= 2026.9.6
NODE_ARCH   := $(shell uname -m | sed -e 's/x86_64/x64/' -e 's/aarch64/arm64/')
NODE_PREFIX := $(VENV)/node
NODE_BIN    := $(NODE_PREFIX)/node_modules/node-linux-$(NODE_ARCH)/bin
NPM_FLAGS   := --prefix $(NODE_PREFIX) --no-audit --no-fund --loglevel=error

# The llama.cpp engine (lab/llm/llamacpp_engine.py) comes from llama-cpp-python, which PyPI ships only
# as source: it is compiled once (a C/C++ compiler; cmake >= 3.21, else pip fetches one; ~3 min on 2
# cores) into a wheel cached under $(LAB_CACHE)/wheels, keyed by version and flags, and every later
# setup installs that wheel. Only the CPU library is built (no llava, tools or tests), with portable
# flags instead of -march=native: x86-64-v3 (AVX2, FMA, F16C) on x86_64, the armv8 baseline on arm64.
# pip's own wheel cache is bypassed (--no-cache-dir): it keys a built wheel by the source alone, so it
# would hand back a wheel built with other flags; $(LLAMA_WHEELS) is this wheel's one cache.
LLAMA_CPP_VERSION ?= 0.3.36
LAB_CACHE         ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/llm-systems-lab
LLAMA_CMAKE_x86_64  := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_CMAKE_aarch64 := -DGGML_NATIVE=OFF
LLAMA_CMAKE ?= -DLLAVA_BUILD=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
               -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF $(LLAMA_CMAKE_$(shell uname -m))
LLAMA_WHEELS := $(LAB_CACHE)/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(shell uname -m)-$(shell echo '$(LLAMA_CMAKE)' | sha256sum | cut -c1-10)

# 2 shared cores: one OpenMP thread per process is 2-3x faster than two fighting threads.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM = false
# frameworks' phone-home off (lab.toolchain.quiet_frameworks sets the same defaults in-process)
export ANONYMIZED_TELEMETRY = False
export RAGAS_DO_NOT_TRACK = true
export CREWAI_DISABLE_TELEMETRY = true
export CREWAI_DISABLE_TRACKING = true
export CREWAI_TRACING_ENABLED = false
export HF_HUB_DISABLE_TELEMETRY = 1
export DO_NOT_TRACK = 1

# The Phase 16 site check loads pages in Debian's headless Chromium: installed with apt when missing
# and allowed (root, or passwordless sudo). Never fails setup: without it the browser tests skip
# and say why (CI sets LAB_REQUIRE_BROWSER=1 so there they fail instead).
BROWSER_PKGS ?= chromium fonts-dejavu-core
BROWSER_MISSING = echo "note: no Chromium: install it with 'sudo apt-get install -y --no-install-recommends $(BROWSER_PKGS)' (the Phase 16 browser tests skip until then)"
APT_INSTALL = apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PKGS)

# the engine job `make demo` ends with (one post on the embedded defaults; prints the site's path)
DEMO_TOPIC ?= How does HyDE retrieval help a RAG pipeline find the right chunks?

# vLLM serves the a100 profiles of Phases 13-16 (Llama 3.1 8B Instruct on 127.0.0.1:8000, what their `llm`
# names). It cannot share $(VENV): its pins fight this project's (0.34.0 wants torch 2.14.0,
# transformers < 5.23, fastapi < 0.137), so it gets a venv of its own and the exercises only speak HTTP
# to it. `tool_choice: auto` needs the tool-call parser flags. Without vLLM the exercises start
# `lab serve --llm local:$(VLLM_MODEL)` on that port themselves (lab/llm/server.py).
VLLM_VENV    ?= .venv-vllm
VLLM_VERSION ?= 0.34.0
VLLM_MODEL   ?= meta-llama/Llama-3.1-8B-Instruct
VLLM_PORT    ?= 8000
VLLM_ARGS    ?= --host 127.0.0.1 --port $(VLLM_PORT) --served-model-name $(VLLM_MODEL) --max-model-len 16384 \
                --gpu-memory-utilization 0.85 --enable-auto-tool-choice --tool-call-parser llama3_json
VLLM_STAMP   := $(VLLM_VENV)/.installed-vllm-$(VLLM_VERSION)

.PHONY: setup browser demo test lint gpu-smoke report clean-venv vllm vllm-serve

setup: $(STAMP) browser

browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then $(BROWSER_MISSING); \
	elif [ "$$(id -u)" = 0 ]; then $(APT_INSTALL) || $(BROWSER_MISSING); \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n sh -c '$(APT_INSTALL)' || $(BROWSER_MISSING); \
	else $(BROWSER_MISSING); fi

$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); 3.11+ is needed (make setup PYTHON=python3.11)"; exit 1; }
	@command -v npm >/dev/null 2>&1 || \
	  { echo "error: no npm: it installs the pinned Node 24 and OpenClaw into $(NODE_PREFIX) (Debian/Ubuntu: sudo apt-get install -y npm)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	args=$$(TORCH_VERSION="$(TORCH_VERSION)" TORCH_VARIANT="$(TORCH_VARIANT)" TORCH_INDEX_URL="$(TORCH_INDEX_URL)" \
	  $(BIN)/python lab/torch_install.py --print-pip-args) && $(BIN)/python -m pip install --quiet $$args
	@command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 || \
	  { echo "error: no C/C++ compiler: llama-cpp-python is compiled once here (Debian/Ubuntu: sudo apt-get install -y build-essential)"; exit 1; }
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc 2>/dev/null || echo 2) $(BIN)/python -m pip wheel \
	  --quiet --no-deps --no-cache-dir --find-links "$(LLAMA_WHEELS)" --wheel-dir "$(LLAMA_WHEELS)" llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(BIN)/python -m pip install --quiet --find-links "$(LLAMA_WHEELS)" llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[dev,agents]"
	$(BIN)/python -m pip check
	npm install $(NPM_FLAGS) node-linux-$(NODE_ARCH)@$(NODE_VERSION)
	PATH="$(CURDIR)/$(NODE_BIN):$$PATH" npm install $(NPM_FLAGS) openclaw@$(OPENCLAW_VERSION)
	$(BIN)/lab models fetch
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	status=0; $(BIN)/lab run all --profile cpu --jobs $(JOBS) || status=$$?; $(BIN)/lab report; \
	$(BIN)/python -m phase16_capstone run "$(DEMO_TOPIC)" || status=$$?; exit $$status

test: setup lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# ruff (lint + format check) over every Python file and mypy over lab/ (settings in pyproject.toml)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The a100 code path of Phases 8-12 on a real GPU with tiny stand-in models (a few minutes); writes
# runs/gpu-smoke/gpu_smoke.json naming the device. Fails with "no CUDA device" on a machine without one.
gpu-smoke: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m lab.gpu_smoke

report: setup
	$(BIN)/lab report

clean-venv:
	rm -rf $(VENV)

vllm: $(VLLM_STAMP)
	@echo "vLLM $(VLLM_VERSION) in $(VLLM_VENV); serve the a100 model with:  make vllm-serve"
	@echo "  ($(VLLM_VENV)/bin/vllm serve $(VLLM_MODEL) $(VLLM_ARGS))"

vllm-serve: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/vllm serve $(VLLM_MODEL) $(VLLM_ARGS)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "vllm==$(VLLM_VERSION)"
	$(VLLM_VENV)/bin/python -m pip check
	rm -f $(VLLM_VENV)/.installed-vllm-*
	touch $@
