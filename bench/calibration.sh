#!/usr/bin/env bash
# Issue 20's calibration: the joint probe's set search (predicted loss of any set) against
# sparse adapters trained on those sets alone, at the probe's own budget and on its own data
# (32 examples of at most 64 tokens, 8 steps, 16 validation examples, data seed 42), so the
# gap measures the prediction, not a change of budget. Cached and resumable; one torch job.
#   bash bench/calibration.sh            (SmolLM2, general; MODEL=..., DATA=..., SEEDS=42,43)
# The fair compare (selection on data seed 42, training and judging on another sample):
#   COMPARE_SEED=1 SEEDS=42,43,44 VAL=64 bash bench/calibration.sh
# The same at the budget study's training budget T (1,024 examples of <= 128 tokens, 128 steps of
# batch 8, lr 2e-4; bench/budget_study.sh), the searched set against the top-k singles only:
#   BUDGET=T COMPARE_SEED=1 SEEDS=42,43,44 VAL=64 bash bench/calibration.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
MODEL=${MODEL:-smollm2-135m} DATA=${DATA:-general} SEEDS=${SEEDS:-42} COMPARE_SEED=${COMPARE_SEED:-42} VAL=${VAL:-16}
case ${BUDGET:-probe} in
  probe) train=(--max-samples 32 --max-length 64 --batch-size 4 --lr 1e-3)
         POLICIES=${POLICIES:-probe-set,probe,floe,adapter-norm,deepest} KS=${KS:-2,4,8,16} ;;
  # all layers at T is the budget study's compare's row already (3 trainings at T each)
  T) train=(--max-samples 1024 --max-length 128 --batch-size 8 --lr 2e-4 --no-include-all)
     POLICIES=${POLICIES:-probe-set,probe} KS=${KS:-8} ;;
  *) echo "BUDGET must be probe or T, got ${BUDGET}" >&2; exit 2 ;;
esac
out=bench/results/calibration; mkdir -p "$out"
tag=$MODEL-$DATA
judged=$tag$([[ $COMPARE_SEED == 42 ]] || echo "-data$COMPARE_SEED")$([[ $VAL == 16 ]] || echo "-val$VAL")$([[ ${BUDGET:-probe} == probe ]] || echo "-$BUDGET")
floe analyze --model "$MODEL" --data "$DATA" --device cpu --quiet --json > "$out/analyze-$tag.json"
score=$(run_of "$out/analyze-$tag.json")
floe probe --score-run "$score" --schedule joint --set-search --device cpu --quiet --json > "$out/probe-$tag.json"
probe=$(run_of "$out/probe-$tag.json")
floe compare --score-run "$score" --probe-run "$probe" --data "$DATA" \
  --policies "$POLICIES" --ks "$KS" --seeds "$SEEDS" \
  "${train[@]}" --val-samples "$VAL" --seed "$COMPARE_SEED" \
  --tasks '' --device cpu --quiet --json > "$out/compare-$judged.json"
.venv/bin/python - "$out/probe-$tag.json" "$out/compare-$judged.json" <<'PY' | tee "$out/calibration-$judged.json"
import json, sys
from floe.experiments.calibration import calibration, differing_settings
from floe.store.runs import open_run
probe, compare = (open_run(json.load(open(p))["run"]) for p in sys.argv[1:3])
found = calibration(probe.read_json("probe.json")["set_search"], compare.read_json("compare.json"),
                    differing_settings(probe.config, compare.config))
print(json.dumps({"probe_run": probe.id, "compare_run": compare.id, **found}, indent=2))
PY
