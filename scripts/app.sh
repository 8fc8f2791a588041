#!/usr/bin/env bash
# Set up (first time) and start the app on the embedded default, bound to localhost.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
exec .venv/bin/streamlit run app.py "$@"
