# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each bootstraps $(VENV) from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fcmon-installed

.PHONY: demo test test-fast bench screenshot lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fcmon demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The fast subset CI also runs on Python 3.9 and 3.13.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# docs/status-page.png, the README's screenshot: taken by the status page's
# browser test (chromium and chromium-driver from Debian).
screenshot: $(STAMP)
	FCMON_SCREENSHOT=$(CURDIR)/docs/status-page.png $(BIN)/python -m pytest -q tests/test_status_browser.py

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-* build dist *.egg-info .pytest_cache
