# lass: `make serve` and `make test` set up everything they need, idempotently.
# Set-up is keyed on a hash of pyproject.toml, constraints.txt (the tested version of every
# Python distribution) and the Debian package lists below:
# a second run with nothing changed spends a few seconds on it.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# kenlm (built from source) still declares cmake_minimum_required < 3.5, which the
# cmake 4 that pip pulls into its build environment refuses without this.
export CMAKE_POLICY_VERSION_MINIMUM := 3.5
# Passive OpenMP waiting: spinning threads roughly halve torch's CPU throughput when
# other processes share the cores (see model/__init__.py).
export OMP_WAIT_POLICY ?= PASSIVE
.DEFAULT_GOAL := help

VENV := .venv
# This machine's pip config lists local indexes that warn on every package; keep logs readable.
QUIET_PIP := 2>&1 | { grep -v '^WARNING: Location' || true; }
PY := $(VENV)/bin/python
# Debian packages the service needs at run time (none beyond the wheels yet;
# espeak-ng lets `lass train corpus` synthesize speech on the serving image too).
RUN_APT := espeak-ng
# ... and what tests, the trainer's corpus builder and metric checks need. debconf-doc is
# unrelated text (pages in man5, man7, fr): tests/train/test_text_sources.py checks that
# installing it changes no language's sentence pool. The v2 corpus (configs/corpus/
# default-v2.toml) adds other TTS engines (festival and its en/it/cs/ru voices, flite;
# festvox-ru alone is a 179 MB download) and more text (fortunes, translated manual pages).
TEST_APT := espeak-ng sox prometheus chromium chromium-driver \
	fortunes-min fortunes-de fortunes-it fortunes-es fortunes-pl fortunes-ru fortunes-cs fortunes-br \
	fortunes-bg fortunes-eo manpages manpages-fr manpages-nl manpages-sv manpages-fi debconf-doc \
	festival flite festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-italp16k \
	festvox-itapc16k festival-czech festvox-czech-dita festvox-czech-krb festvox-czech-machac \
	festvox-czech-ph festvox-ru \
	fortunes manpages-de manpages-es manpages-it manpages-pl manpages-ru manpages-cs manpages-pt-br
LOCK := constraints.txt
SPEC := $(shell (cat pyproject.toml $(LOCK); echo "$(RUN_APT) $(TEST_APT)") | sha256sum | cut -c1-12)
RUN_STAMP := $(VENV)/.stamp-run-$(SPEC)
DEV_STAMP := $(VENV)/.stamp-dev-$(SPEC)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: help setup setup-dev serve test lint typecheck pytest clean loadtest kenlm lock

help:
	@echo "make serve   set up and start the service on http://$(HOST):$(PORT)"
	@echo "make test    set up and run every check and test"
	@echo "make loadtest  Locust against a local server (or LOAD_URL), fails past the SLO"

$(PY):
	python3 -m venv $(VENV)

$(RUN_STAMP): | $(PY)
	@bash scripts/apt-ensure.sh $(RUN_APT)
	$(PY) -m pip install -q -c $(LOCK) -e . $(QUIET_PIP)
	@rm -f $(VENV)/.stamp-run-* && touch $@

$(DEV_STAMP): $(RUN_STAMP)
	@bash scripts/apt-ensure.sh $(TEST_APT)
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]' $(QUIET_PIP)
	@rm -f $(VENV)/.stamp-dev-* && touch $@

setup: $(RUN_STAMP)

setup-dev: $(DEV_STAMP) kenlm

# KenLM's lmplz and build_binary in build/kenlm/bin, compiled from the sdist of the pinned
# kenlm (about 2 min on 2 cores, with the Boost headers it installs), after pip installed
# the kenlm module (whose build tools pip then reuses). Only the trainer's LM stage uses them
# (model/train/lm.py falls back to its own estimator); the service does not, so `make
# setup` and the Docker image do without. The script keeps its own stamp: when nothing
# changed it returns at once.
kenlm: | $(RUN_STAMP)
	@bash scripts/build-kenlm.sh $(PY)

serve: setup
	LASS_HOST=$(HOST) LASS_PORT=$(PORT) $(VENV)/bin/lass serve

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup-dev
	$(VENV)/bin/mypy lass model service bench

pytest: setup-dev
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# Locust, headless, against a local `lass serve` (LOAD_SERVER_ENV: its settings; compiling the
# forward at start-up takes minutes on a CPU, hence LASS_COMPILE=off) or LOAD_URL;
# CSV and HTML reports under LOAD_OUT (runs/ is gitignored); fails when the error rate or a
# p99 passes the bounds in LOAD_SLO. A 30 s version runs in `make test`
# (tests/load/test_loadtest.py). Mixes and keys: tests/load/locustfile.py.
LOAD_USERS ?= 8
LOAD_SPAWN_RATE ?= 2
LOAD_DURATION ?= 60s
LOAD_OUT ?= runs/loadtest
LOAD_SLO ?= tests/load/slo.toml
LOAD_URL ?=
LOAD_SERVER_ENV ?= LASS_COMPILE=off
loadtest: setup-dev
	$(PY) -m tests.load.run --users $(LOAD_USERS) --spawn-rate $(LOAD_SPAWN_RATE) \
		--duration $(LOAD_DURATION) --out $(LOAD_OUT) --slo $(LOAD_SLO) \
		$(if $(LOAD_URL),--url $(LOAD_URL)) $(foreach e,$(LOAD_SERVER_ENV),--server-env $(e))

# Rewrite constraints.txt from the venv, after `pip install -U <package>` and a passing
# `make test`: its header stays, the pins become what the venv holds (our own package left out).
# --all keeps setuptools, which torch requires at >= 77 so that pip would otherwise take its
# newest; pip itself comes with the interpreter's venv, not from the lock.
lock: $(DEV_STAMP)
	@{ sed -n '/^#/p' $(LOCK); $(PY) -m pip freeze --all --exclude-editable 2>/dev/null | \
		grep -v '^pip=='; } > $(LOCK).new
	@mv $(LOCK).new $(LOCK) && echo "lock: $$(grep -vc '^#' $(LOCK)) pins in $(LOCK)"

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
