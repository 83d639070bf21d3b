#!/usr/bin/env bash
# Installs what the browser test (tests/app/test_browser.py) needs beside the test extra: Debian's Chromium (apt).
# The Playwright Python package comes with `pip install -e .[test]` (make install); Playwright's own browser download (`playwright install`) is not
# used: the test drives /usr/bin/chromium, so no browser is fetched from outside the package manager.
#   .ci/install-browser.sh            # as root (CI); uses sudo when not root
#   VENV=.venv .ci/install-browser.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi
/usr/bin/chromium --version

if [ ! -x "$VENV/bin/python" ]; then
    echo "no virtual environment at $VENV: run 'make install' first" >&2
    exit 1
fi
"$VENV/bin/python" -c "import playwright.sync_api; print('playwright', __import__('importlib.metadata').metadata.version('playwright'))"
