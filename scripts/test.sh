#!/usr/bin/env bash
# Set up (first time), lint (ruff), type-check floe/ (mypy; both configured in
# pyproject.toml) and run the whole test suite (tiny models + the real SmolLM2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
