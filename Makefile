# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each bootstraps $(VENV) from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fcmon-installed
# The release tools (build, twine), only where `make test`/`dist` need them.
TOOLS := $(VENV)/.fcmon-release-tools
# CONSTRAINTS=constraints-min.txt installs the lowest declared version of
# every dependency (CI's Python 3.9 run); without it, the newest.
CONSTRAINTS ?=
DIST ?= dist
# Extra `pip download` arguments for `make wheelhouse`, e.g. for another host:
# WHEELHOUSE_ARGS="--pip-arg=--python-version=3.11 --pip-arg=--platform=manylinux_2_28_x86_64 --pip-arg=--platform=manylinux2014_x86_64"
WHEELHOUSE_ARGS ?=

.PHONY: demo test test-fast chaos chaos-callers chaos-fleet bench screenshot dist wheelhouse image deb packages test-packages lint clean

# A $(VENV) of another Python than the PYTHON= given is rebuilt, and said so
# (it used to be reused silently). Only when PYTHON is given: without it,
# whatever venv is there is used.
ifneq ($(filter command line environment,$(origin PYTHON)),)
WANT_PYTHON := $(shell $(PYTHON) -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)
HAVE_PYTHON := $(shell [ -x $(BIN)/python ] && $(BIN)/python -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)
ifneq ($(WANT_PYTHON),)
ifneq ($(HAVE_PYTHON),)
ifneq ($(HAVE_PYTHON),$(WANT_PYTHON))
$(info $(VENV) is Python $(HAVE_PYTHON), PYTHON=$(PYTHON) is Python $(WANT_PYTHON): rebuilding $(VENV))
$(shell rm -rf $(VENV))
endif
endif
endif
endif

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $(STAMP)

$(TOOLS): $(STAMP)
	$(BIN)/python -m pip install -q 'build>=1.2' 'twine>=5'
	touch $(TOOLS)

# DEMO_ARGS go to `fcmon demo`, e.g. DEMO_ARGS="--listen 0.0.0.0:9731".
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/fcmon demo $(DEMO_ARGS)

# -rs: the summary names each skipped test and why (a tool not installed).
test: $(STAMP) $(TOOLS)
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

# The fast subset CI also runs on Python 3.9 and 3.13.
test-fast: $(STAMP)
	FCMON_CONSTRAINTS=$(CONSTRAINTS) $(BIN)/python -m pytest -q -rs -m "not slow" $(PYTEST_ARGS)

# docs/status-page-{1400,1000,412}.png, the README's screenshots at three
# widths (desktop, laptop, phone): taken by the status page's browser test
# (chromium and chromium-driver from Debian). Look at them before committing.
screenshot: $(STAMP)
	FCMON_SCREENSHOT_DIR=$(CURDIR)/docs CI=true $(BIN)/python -m pytest -q tests/test_status_browser.py

# The generated adversary at length (tests/test_chaos.py): CHAOS_EXAMPLES
# random cases (default 500) from CHAOS_SEED (default: a new one, printed).
# A failure prints the seed that replays it: make chaos CHAOS_SEED=N.
# Then the soak (tests/test_soak.py) at length: SOAK_SECONDS of warm-up and
# as many measured (`make test` runs it for 15 + 15 s).
CHAOS_EXAMPLES ?= 500
SOAK_SECONDS ?= 30
chaos: $(STAMP)
	@seed=$${CHAOS_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "chaos: $(CHAOS_EXAMPLES) cases, seed $$seed"; \
	CHAOS_EXAMPLES=$(CHAOS_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_chaos.py tests/test_census_chaos.py -k generated --hypothesis-seed=$$seed $(PYTEST_ARGS) \
	|| { echo "chaos FAILED with seed $$seed: replay with make chaos CHAOS_SEED=$$seed CHAOS_EXAMPLES=$(CHAOS_EXAMPLES)"; exit 1; }
	FCMON_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_soak.py $(PYTEST_ARGS)

# The generated caller mix at length (tests/test_callers.py): CALLER_EXAMPLES
# random mixes (default 30, each `fcmon run` as a process for about 10 s)
# from CALLER_SEED (default: a new one, printed); CALLER_MIX_SECONDS per mix.
CALLER_EXAMPLES ?= 30
chaos-callers: $(STAMP)
	@seed=$${CALLER_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "chaos-callers: $(CALLER_EXAMPLES) mixes, seed $$seed"; \
	CALLER_EXAMPLES=$(CALLER_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_callers.py --hypothesis-seed=$$seed $(PYTEST_ARGS) \
	|| { echo "chaos-callers FAILED with seed $$seed: replay with make chaos-callers CALLER_SEED=$$seed CALLER_EXAMPLES=$(CALLER_EXAMPLES)"; exit 1; }

# The generated fleet at length (tests/test_fleet.py): FLEET_EXAMPLES random
# fleets (default 30, each run by the real scheduler for 4-7 s, and as
# `fcmon run` for SIGTERM) from FLEET_SEED (default: a new one, printed).
FLEET_EXAMPLES ?= 30
chaos-fleet: $(STAMP)
	@seed=$${FLEET_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "chaos-fleet: $(FLEET_EXAMPLES) fleets, seed $$seed"; \
	FLEET_EXAMPLES=$(FLEET_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_fleet.py --hypothesis-seed=$$seed $(PYTEST_ARGS) \
	|| { echo "chaos-fleet FAILED with seed $$seed: replay with make chaos-fleet FLEET_SEED=$$seed FLEET_EXAMPLES=$(FLEET_EXAMPLES)"; exit 1; }

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# sdist + wheel (isolated build), `twine check`, and the contents check.
dist: $(TOOLS)
	$(BIN)/python tools/release.py dist $(DIST)

# The wheel and every dependency's wheel in $(DIST)/wheelhouse, for a host
# without internet: pip install --no-index --find-links wheelhouse/ fcmon
wheelhouse: dist
	$(BIN)/python tools/release.py wheelhouse $(DIST) $(WHEELHOUSE_ARGS)

# The version every artefact carries (fcmon/__init__.py).
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' fcmon/__init__.py)

# The OCI image, from the Containerfile and the wheelhouse (no network):
# buildah, as root, tags $(IMAGE):$(VERSION) and saves it as
# $(DIST)/fcmon-VERSION-image.tar (docker-archive). BASE: any image with
# python3 and its venv module; by default a Debian bookworm base that
# packaging/base-image.sh builds with mmdebstrap (no image registry needed).
IMAGE ?= localhost/fcmon
BASE ?= localhost/fcmon-base:bookworm
image: wheelhouse
	IMAGE=$(IMAGE) BASE=$(BASE) packaging/build-image.sh $(VERSION) $(DIST)

# The Debian package $(DIST)/fcmon_VERSION-1_ARCH.deb: a venv of this
# host's /usr/bin/python3 in /opt/fcmon, from the wheelhouse, with dpkg-deb.
deb: wheelhouse
	$(BIN)/python packaging/build_deb.py $(VERSION) $(DIST)

packages: image deb

# Both built, then exercised (tests/test_packages.py, as root): the image
# run with buildah against the emulator until fcmon_up 1; the package
# lintian-checked, installed with dpkg -i into a fresh Debian root
# (mmdebstrap), validated, its unit verified, removed and purged.
DEB_TEST_ROOT := build/deb-test-root.tar
$(DEB_TEST_ROOT):
	packaging/base-image.sh $@ --packages python3,procps,systemd
test-packages: packages $(DEB_TEST_ROOT) $(TOOLS)
	DIST=$(DIST) IMAGE=$(IMAGE) DEB_TEST_ROOT=$(DEB_TEST_ROOT) \
		$(BIN)/python -m pytest -q -p no:cacheprovider -m package tests/test_packages.py $(PYTEST_ARGS)
	$(BIN)/python tools/release.py check $(DIST)

clean:
	rm -rf $(VENV) .venv-* build dist *.egg-info .pytest_cache
