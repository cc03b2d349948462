# ferroloop — common tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Libraries built on asyncio that tests/test_libraries.py runs on ferroloop.
LIBRARY_TEST_DEPS := aiohttp websockets uvicorn starlette "twisted[tls]" asyncpg blockbuster

.PHONY: help venv develop build test test-rust test-py lint fmt conformance bench clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

venv: ## Create the virtualenv with the build and test tools
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.5,<2" "pytest>=7" ruff $(LIBRARY_TEST_DEPS)

develop: venv ## Build the extension (release) and install it into the virtualenv
	$(VENV)/bin/maturin develop --release -q

build: venv ## Build a release wheel into dist/
	$(VENV)/bin/maturin build --release -o dist

test: develop test-rust test-py ## Build, then run every test (Rust, pytest, conformance ratchet)

test-rust: ## Rust unit tests (timer heap, registrations)
	PYO3_PYTHON=$(abspath $(PY)) cargo test --lib -q

test-py: ## pytest suite (each test body on ferroloop and on stdlib asyncio)
	$(PY) -m pytest -q

lint: ## cargo fmt --check, clippy -D warnings, ruff
	cargo fmt --check
	PYO3_PYTHON=$(abspath $(PY)) cargo clippy --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks
	$(VENV)/bin/ruff format --check python tests benchmarks

fmt: ## Format Rust and Python
	cargo fmt
	$(VENV)/bin/ruff format python tests benchmarks

conformance: develop ## CPython's test_asyncio against ferroloop (summary + ratchet check)
	$(PY) tests/conformance/run.py --check-ratchet

bench: develop ## Side-by-side benchmarks (installs uvloop to compare against)
	$(PY) -m pip install -q uvloop httptools
	$(PY) -m ferroloop bench

clean: ## Remove build products
	cargo clean
	rm -rf dist
