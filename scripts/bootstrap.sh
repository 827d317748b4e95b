#!/usr/bin/env bash
# Create .venv and install the project (and, with `test`, what the tests need). Idempotent: it
# reinstalls only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo ">> creating virtual environment .venv"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)${extras:+-$extras}"
if [ ! -f "$stamp" ]; then
    echo ">> installing ImaginAItion${extras:+ with [$extras]} (first time: torch takes a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # --progress-bar off keeps CI logs readable; torch/torchvision bounds live in pyproject.toml.
    .venv/bin/python -m pip install --progress-bar off -e ".${extras:+[$extras]}"
    touch "$stamp"
fi
