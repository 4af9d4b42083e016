#!/usr/bin/env bash
# Sets up everything on a fresh machine: .venv with the CPU build of torch 2.13.0 and pixart[dev].
# Safe to rerun. Torch is installed first and pinned so no resolver pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[dev]" "torch==2.13.0"
echo "pixart is set up: .venv/bin/pixart --help"
