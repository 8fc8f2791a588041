# Shared by the experiment scripts of bench/ (sourced): one torch job's environment, the
# project's floe, and the run id of a --json summary.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
floe() { .venv/bin/floe "$@"; }
run_of() { .venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["run"])' "$1"; }
