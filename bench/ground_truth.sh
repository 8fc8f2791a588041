#!/usr/bin/env bash
# The experiments of docs/results.md. For each model and data set:
#   1. the default analysis (FLoE's scores and every baseline ranking);
#   2. the full probe with two seeds: each layer adapted alone, its measured validation-loss
#      gain, and every policy's agreement with it;
#   3. the cheap probe (--schedule joint, one seed), the measured selection at FLoE's cost;
#   4. a fair compare: the layers are chosen on the analysis's sample (data seed 42), then
#      every policy's top-k is trained and judged on another sample and split (data seed
#      $EVAL_SEED), k in {4, 8}, three training seeds, val loss only (no benchmark: at this
#      budget ARC-Easy moved no decision); the probe column from the full probe, then a
#      second compare for the cheap probe's column. adapter-norm (the warm-up update norm,
#      the ranking that agreed best with the probe on SmolLM2) is compared as well.
# CPU hours: run it in the background, one at a time (two torch jobs on 2 cores each run
# several times slower); finished runs are cached, so a rerun continues where it stopped.
#   nohup nice bash bench/ground_truth.sh > bench/results/ground_truth.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
out=bench/results/ground_truth
mkdir -p "$out"
EVAL_SEED=${EVAL_SEED:-1}
compare=(--ks 4,8 --seeds 42,43,44 --seed "$EVAL_SEED" --tasks '' --device cpu --quiet --json)
for model in ${MODELS:-smollm2-135m gemma3-270m}; do
  for data in ${DATASETS:-general medical}; do
    tag="$model-$data"
    echo "$(date +%T) $tag: analyze"
    floe analyze --model "$model" --data "$data" --device cpu --quiet --json > "$out/analyze-$tag.json" || continue
    score=$(run_of "$out/analyze-$tag.json")
    echo "$(date +%T) $tag: probe (score run $score)"
    floe probe --score-run "$score" --seeds 42,43 --device cpu --quiet --json > "$out/probe-$tag.json" || continue
    echo "$(date +%T) $tag: cheap probe"
    floe probe --score-run "$score" --schedule joint --seeds 42 --device cpu --quiet --json \
      > "$out/cheap-probe-$tag.json" || continue
    echo "$(date +%T) $tag: fair compare"
    floe compare --score-run "$score" --probe-run "$(run_of "$out/probe-$tag.json")" --data "$data" \
      --policies probe,floe,deepest,lora-drop,ht-sr,random,adapter-norm "${compare[@]}" > "$out/fair-compare-$tag.json" || continue
    echo "$(date +%T) $tag: fair compare, the cheap probe's column"
    floe compare --score-run "$score" --probe-run "$(run_of "$out/cheap-probe-$tag.json")" --data "$data" \
      --policies probe --no-include-all "${compare[@]}" > "$out/fair-compare-cheap-$tag.json" || continue
    echo "$(date +%T) $tag: done"
  done
done
