#!/usr/bin/env bash
# Set up (first time), lint (ruff), type-check floe/ (mypy; both configured in
# pyproject.toml) and run the whole test suite (tiny models + the real SmolLM2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Two test workers, one OpenMP thread each: on small CPUs two single-threaded processes
# finish the suite sooner than one with two threads (tiny models and process start-ups
# parallelise poorly inside torch). Tests are shared out one by one, not by file (the long
# crash and real-model tests would pile up on one worker); a module whose fixture runs a
# whole scenario keeps its tests together with pytest.mark.xdist_group.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -n "${FLOE_TEST_WORKERS:-2}" --dist loadgroup "$@"
