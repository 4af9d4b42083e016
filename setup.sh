#!/usr/bin/env bash
# Sets up everything on a fresh machine: .venv with torch 2.13.0 and pixart[dev]. Safe to rerun.
# Torch is installed first and pinned, so the second install never swaps the build: on this project's
# machines pip finds the CPU build in their local wheel store; elsewhere PyPI's default build is CUDA,
# and TORCH_INDEX_URL picks another (https://download.pytorch.org/whl/cpu for a CPU-only machine).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
.venv/bin/python -m pip install --quiet -e ".[dev]" "torch==2.13.0"
# The browser tests (tests/test_app.py, marker `browser`) drive the system's headless Chromium; they skip without it.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "installing chromium (Debian package) for the browser tests..."
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
            echo "could not install chromium: the browser tests will skip"
    else
        echo "no /usr/bin/chromium, and no apt-get as root to install it: the browser tests will skip"
    fi
fi
echo "pixart is set up: .venv/bin/pixart --help"
