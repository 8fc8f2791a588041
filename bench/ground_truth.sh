#!/usr/bin/env bash
# The ground-truth experiment of docs/results.md: for each model and data set, the default
# analysis, a probe of every layer with two seeds (each layer adapted alone, its measured
# validation-loss gain, and every policy's agreement with it), and a k=8 compare of floe,
# deepest, random and lora-drop over three training seeds.
# CPU hours: run it in the background, one at a time (two torch jobs on 2 cores each run
# several times slower); finished runs are cached, so a rerun continues where it stopped.
#   nohup nice bash bench/ground_truth.sh > bench/results/ground_truth.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=bench/results/ground_truth
mkdir -p "$out"
floe() { .venv/bin/floe "$@"; }
for model in ${MODELS:-smollm2-135m gemma3-270m}; do
  for data in ${DATASETS:-general medical}; do
    tag="$model-$data"
    echo "$(date +%T) $tag: analyze"
    floe analyze --model "$model" --data "$data" --device cpu --quiet --json > "$out/analyze-$tag.json" || continue
    score=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["run"])' "$out/analyze-$tag.json")
    echo "$(date +%T) $tag: probe (score run $score)"
    floe probe --score-run "$score" --seeds 42,43 --device cpu --quiet --json > "$out/probe-$tag.json" || continue
    echo "$(date +%T) $tag: compare"
    floe compare --score-run "$score" --ks 8 --policies floe,deepest,random,lora-drop --seeds 42,43,44 \
      --no-include-all --tasks arc-easy --limit 50 --device cpu --quiet --json > "$out/compare-$tag.json" || continue
    echo "$(date +%T) $tag: done"
  done
done
