#!/usr/bin/env bash
# Set up (first time) and start the app on the embedded default, bound to localhost.
# --allow-remote-code: let the app's forms offer --trust-remote-code (models' own Python
# code); off by default, since anyone who can reach the page could then run code here.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
  if [ "$arg" = "--allow-remote-code" ]; then export FLOE_ALLOW_REMOTE_CODE=1; else args+=("$arg"); fi
done
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
exec .venv/bin/streamlit run app.py ${args[@]+"${args[@]}"}
