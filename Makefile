# Quick start: `make demo` (build, export and run the default model), `make test` (the test suite).
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build these machines carry (an unpinned torch pulls CUDA packages)
	$(BIN)/pip install -q torch==2.13.0
	# openai's CLIP vocabulary for the locally built models; --no-deps: its torchvision is not needed
	$(BIN)/pip install -q --no-deps clip-anytorch==2.6.0
	$(BIN)/pip install -q -e ".[export,test]"
	touch $(STAMP)

.PHONY: demo test
demo: $(STAMP)
	$(BIN)/inpaint-demo --output out

test: $(STAMP)
	$(BIN)/python -m pytest -q
