#!/usr/bin/env bash
# Set up (idempotent), then lint and run the test suite (slow and GPU tests are opt-in:
# pass -m slow or -m gpu to run them). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f scripts/install_browser_test_deps.sh ]; then bash scripts/install_browser_test_deps.sh; fi
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
exec .venv/bin/python -m pytest -m "not slow and not gpu" "$@"
