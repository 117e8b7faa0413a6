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
	$(BIN)/pip install -q -e ".[export,test,serve,openvino,bench,docs]"
	touch $(STAMP)

.PHONY: demo test chromium docs
demo: $(STAMP)
	$(BIN)/inpaint-demo --output out

# The serve browser test drives Debian's Chromium through Playwright (Playwright's own browser
# downloads cannot be fetched here). Installed once, only when missing; without root it says so
# and the browser test skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed (apt-get needs root): the browser test will skip"

# The docs site (mkdocs.yml): --strict fails on a broken link, anchor or a page missing from nav.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test: $(STAMP) chromium docs
	$(BIN)/python -m pytest -q
