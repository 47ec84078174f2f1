#!/usr/bin/env bash
# Set up (idempotent), then lint and run the test suite (slow and GPU tests are opt-in:
# pass -m slow or -m gpu to run them). Extra arguments go to pytest (-n 0: one process).
# The tests run in one pytest-xdist worker per CPU, at most 4 (OVSAM_TEST_WORKERS=N sets N);
# tests/conftest.py gives each worker its share of the CPU's threads.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f scripts/install_browser_test_deps.sh ]; then bash scripts/install_browser_test_deps.sh; fi
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
# OVSAM_TEST_WORKERS goes to pytest-xdist as given (N, or auto: one per CPU, no cap)
workers=${OVSAM_TEST_WORKERS:-$(($(nproc) < 4 ? $(nproc) : 4))}
exec .venv/bin/python -m pytest -m "not slow and not gpu" -n "$workers" "$@"
