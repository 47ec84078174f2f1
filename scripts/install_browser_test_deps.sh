#!/usr/bin/env bash
# Install what the browser test needs: Debian's chromium and Playwright's Python package
# (which drives the system browser; no browser download). Idempotent (installs nothing, and
# needs no network, when both are there); best effort: the browser
# tests are skipped without chromium, so a failed install (no such package, no mirror, a dpkg
# lock) only says so and does not stop scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
      echo "could not install chromium with apt-get: browser tests will be skipped" >&2
    fi
  else
    echo "chromium is not installed and cannot be installed here: browser tests will be skipped" >&2
  fi
fi
if ! .venv/bin/python -c 'import playwright.sync_api' 2>/dev/null &&
  ! .venv/bin/python -m pip install --quiet --disable-pip-version-check "playwright>=1.40"; then
  echo "could not install playwright: browser tests will be skipped" >&2
fi
