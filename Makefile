# Quick start: `make demo` (build, export and run the default model), `make test` (the test suite).
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The development environment: the extras below at the exact versions of requirements/dev.lock (the ones the
# suite last passed with), so a fresh machine does not pick up what a registry published overnight. Users'
# `pip install inpaintrt` keeps pyproject's ranges. `make lock` re-resolves the extras and runs the suite.
DEV_EXTRAS := export,test,serve,openvino,bench,docs
LOCK := requirements/dev.lock

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	# the lock holds pip itself, torch (the CPU build these machines carry) and setuptools for the editable build
	$(BIN)/pip install -q -r $(LOCK)
	# openai's CLIP vocabulary for the locally built models; --no-deps: its torchvision is not needed
	$(BIN)/pip install -q --no-deps clip-anytorch==2.6.0
	# Segment Anything's own code, the tests' reference; --no-deps: its torchvision does not import beside this torch
	$(BIN)/pip install -q --no-deps segment-anything==1.0
	# IOPaint's built web page, which `inpaint-serve --page iopaint` serves; --no-deps: its server is not used
	$(BIN)/pip install -q --no-deps iopaint==1.6.0
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Resolve the extras afresh in a scratch venv (torch first, pinned: an unpinned torch pulls CUDA packages),
# write the lock, then rebuild .venv from it and run the whole suite: a new lock lands only green.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip "setuptools>=77"
	.venv-lock/bin/pip install -q torch==2.13.0
	.venv-lock/bin/pip install -q --no-deps clip-anytorch==2.6.0
	.venv-lock/bin/pip install -q -e ".[$(DEV_EXTRAS)]"
	{ echo "# make lock: the exact development environment for .[$(DEV_EXTRAS)] (Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())'))"; \
	  .venv-lock/bin/pip freeze --all --exclude-editable | grep -v '^clip-anytorch==' | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > $(LOCK)
	rm -rf .venv-lock
	$(MAKE) test

.PHONY: demo test chromium docs lock
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

# On every core (pytest-xdist; tests/conftest.py keeps each test file, and all the Ray files, on one worker).
test: $(STAMP) chromium docs
	$(BIN)/python -m pytest -q -n auto --durations=30
