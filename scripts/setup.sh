#!/usr/bin/env bash
# Create or reuse .venv and install everything from this repo's files. Idempotent: a
# stamp of the requirement files makes a re-run with nothing changed take a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.floe-installed
want=$(cat requirements.txt requirements-assets.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned where a CPU wheel is at hand; a GPU user's installed torch
  # satisfies requirements.txt's range and is kept.
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch
  fi
  .venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
  .venv/bin/python -m pip install -q --no-deps -r requirements-assets.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
