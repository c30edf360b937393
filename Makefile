# Two commands on a fresh machine:  `make demo`  and  `make test`  (both run `make setup` first).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# exercises run side by side, one process and one thread each (lab run --jobs; default: all cores)
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)

# 2 shared cores: one OpenMP thread per process is 2-3x faster than two fighting threads.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM = false
export ANONYMIZED_TELEMETRY = False
export RAGAS_DO_NOT_TRACK = true

.PHONY: setup demo test report clean-venv

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/lab models fetch
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	status=0; $(BIN)/lab run all --profile cpu --jobs $(JOBS) || status=$$?; $(BIN)/lab report; exit $$status

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

report: setup
	$(BIN)/lab report

clean-venv:
	rm -rf $(VENV)
