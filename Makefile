# llm-finetune — every target sets up what it needs from nothing, and is fast when already set up.
#   make run     fine-tune the tiny demo model locally through the chart's own commands
#   make test    the whole test suite (real Helm 3 + 4, SeaweedFS, torchrun, training)
#   make bench   benchmarks (not part of make test)
#   make images  build both images here (docker, or buildah without a Docker daemon)
#   make gpu-check  the trainer vs plain TRL on a GPU: tokens/s, peak memory, MFU (tests/gpu/check.py)

SHELL      := /bin/bash
PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
TOOLS      := .tools
HELM3      := $(TOOLS)/helm-3.17/helm
HELM4      := $(TOOLS)/helm-4.1/helm
CHECKOV    := $(TOOLS)/checkov/bin/checkov
STAMP      := $(VENV)/.installed
PYTEST_ARGS ?=

export LLM_FINETUNE_HELM3 := $(CURDIR)/$(HELM3)
export LLM_FINETUNE_HELM4 := $(CURDIR)/$(HELM4)
export LLM_FINETUNE_CHECKOV := $(CURDIR)/$(CHECKOV)
export HELM_BIN ?= $(CURDIR)/$(HELM4)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all setup venv tools test run bench gpu-check gpu-wheels lint images chart-docs constraints clean

all: test

setup: venv tools

venv: $(STAMP)

# torch first (the CPU wheel on local disk), then the pinned set.
$(STAMP): python/pyproject.toml python/constraints.txt python/requirements-test.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c python/constraints.txt -e 'python[all]' -r python/requirements-test.txt
	touch $@

tools: $(HELM3) $(HELM4) $(CHECKOV)

$(HELM3) $(HELM4): tests/tools/get-helm.sh
	bash tests/tools/get-helm.sh $(TOOLS)
	touch $(HELM3) $(HELM4)

# checkov pins many packages of its own: it gets its own venv.
$(CHECKOV):
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install -q checkov==3.3.30

test: venv tools
	$(BIN)/pytest tests $(PYTEST_ARGS)

run: venv $(HELM3) $(HELM4)
	$(BIN)/llm-finetune run-local --demo -f values-examples/local-demo.yaml --workdir .run

bench: venv
	$(BIN)/python tests/bench/run_all.py

# On the accelerator machine (no network, no set-up: its own Python; see tests/gpu/check.sh).
gpu-check:
	bash tests/gpu/check.sh $(GPU_CHECK_ARGS)

# Where there is network: the TRL + datasets wheels gpu-check installs where they are missing.
gpu-wheels: venv
	$(BIN)/python tests/gpu/wheels.py

lint: $(HELM3) $(HELM4)
	$(HELM3) lint --strict chart
	$(HELM4) lint --strict chart

chart-docs: venv
	$(BIN)/python tests/tools/chart_docs.py --write

# Both images from images/*/Dockerfile: docker where a daemon runs, otherwise buildah on a local
# stand-in base (installs buildah/podman/runc/debootstrap from apt when missing); skipped when the
# inputs hash is unchanged. IMAGES_ARGS: e.g. --force, --image trainer, --torch cpu (see images/build.py).
IMAGES_ARGS ?=
images:
	$(PYTHON) images/build.py $(IMAGES_ARGS)

constraints: venv
	@{ sed -n '1,4p' python/constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/'; } > python/constraints.txt.new
	mv python/constraints.txt.new python/constraints.txt

clean:
	rm -rf $(VENV) $(TOOLS) .run .pytest_cache .gpu-check
