#!/usr/bin/env bash
# The budget study (docs/results.md, "The verdict at a larger budget"): does FLoE's ranking,
# or the measured one, change when the warm-up and the training are the size users run?
# For each model and data set, in order of what each step settles:
#   1. the default analysis (W = 64 examples, 8 steps) and the joint cheap probe at the
#      default probe budget (32 examples of 64 tokens, 8 steps): today's ground truth (its set
#      search, --set-search for policy probe-set, is added to the same run before step 4 needs it);
#   2. the joint probe at the large training budget T (one epoch over $T_EXAMPLES examples
#      of <= 128 tokens, batch 8, lr 2e-4: the training defaults; 1,024 examples = 128
#      steps), judged on $VAL held-out examples: the ground truth at T;
#   3. the warm-up ladder: FLoE's analysis (and so adapter-norm, LoRA-drop) from warm-ups of
#      one epoch over W in $LADDER examples;
#   4. the fair compare at T (selection on data seed 42, training and judging on data seed
#      $EVAL_SEED): FLoE (largest W), the probes (default budget and T; the default
#      budget's set search too), adapter-norm
#      (largest W), LoRA-drop, deepest and all layers, k = $KS, training seeds $SEEDS;
#   4b. the same trainings judged by benchmarks ($JUDGE_TASKS through lm-eval, $JUDGE_LIMIT items
#      each, the base model's accuracy beside them): does the held-out loss's verdict show there?
#   5. the full single-layer probe at T on $FULL_LAYERS, 2 seeds: does the joint reading
#      hold at T?
#   6. the paper's protocol, when both sets are studied: FLoE's selection from the warm-up on
#      the general set (largest W), trained and judged on the medical set at T, next to the
#      medical set's own selections (the compare of step 4 on medical), and judged as in 4b.
# Every step is a cached run: a rerun continues where it stopped. CPU hours: one torch job at a
# time, in the background:
#   nohup nice bash bench/budget_study.sh > bench/results/budget_study.log 2>&1 &
# Gemma-3-270M on the general set, the ladder and the probe only:
#   MODELS=gemma3-270m DATASETS=general STEPS="ground-truth ladder" bash bench/budget_study.sh
# Tables: .venv/bin/python -m bench.report_budget
# Across machines: STORAGE (an Optuna RDB URL; default bench/study/cells.sqlite3, kept in the
# repository; STORAGE= for none) holds every compare cell's and full-probe cell's result, and
# the study starts by restoring the small runs bench/study_archive.sh kept (scores, probes, compares), so a fresh
# machine resumes where the last one stopped. Keep what a session did: bash
# bench/study_archive.sh save (the study paused or done), then commit bench/study/.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
source bench/common.sh
out=${STUDY_OUT:-bench/results/budget}  # the summaries (bench/study_archive.sh reads the same)
mkdir -p "$out"
bash bench/study_archive.sh restore
step() { echo "$(date +%T) $tag: $*"; }
LADDER=${LADDER:-256 1024 2048}
T_EXAMPLES=${T_EXAMPLES:-1024}
VAL=${VAL:-64}
FULL_LAYERS=${FULL_LAYERS:-0,3,6,9,12,15,18,21,24,27}
KS=${KS:-8}
SEEDS=${SEEDS:-42,43,44}
EVAL_SEED=${EVAL_SEED:-1}
JUDGE_TASKS=${JUDGE_TASKS:-arc-easy,piqa}
JUDGE_LIMIT=${JUDGE_LIMIT:-500}
# The paper's protocol asks about FLoE's selection; each further policy costs 3 trainings at T.
PAPER_POLICIES=${PAPER_POLICIES:-floe}
STORAGE=${STORAGE-sqlite:///bench/study/cells.sqlite3}
STEPS=${STEPS:-ground-truth ladder compare judge full-probe paper-protocol}
# DEVICE=cuda on a GPU machine (every figure in docs/results.md is from the CPU default).
DEVICE=${DEVICE:-cpu}
at_T=(--max-samples "$T_EXAMPLES" --max-length 128 --batch-size 8 --lr 2e-4 --val-samples "$VAL")
common=(--device "$DEVICE" --quiet --json)
wants() { [[ " $STEPS " == *" $1 "* ]]; }
status_of() {
  .venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1])).get("status"))' \
    "${FLOE_CACHE:-cache}/runs/$1/state.json" 2>/dev/null
}
# analysis FILE ARGS: floe analyze, unless FILE records a score run the cache holds finished
# (restored from an archive without its warm-up's weights, it is not computed again).
analysis() {
  local file=$1; shift
  [ -s "$file" ] && [ "$(status_of "$(run_of "$file")")" = done ] && return 0
  floe analyze --model "$model" --data "$data" "$@" "${common[@]}" > "$file"
}
# The joint probe at the default budget; with --set-search the same run, its search added.
default_probe() {
  floe probe --score-run "$score" --schedule joint "$@" "${common[@]}" > "$out/probe-default-$tag.json"
}
for model in ${MODELS:-smollm2-135m}; do
  for data in ${DATASETS:-general medical}; do
    tag="${model##*/}-$data"  # a model given as a folder is named by its last part
    step "analyze W=64"
    analysis "$out/analyze-$tag-64.json" || continue
    score=$(run_of "$out/analyze-$tag-64.json")
    if wants ground-truth; then
      # Its set search (about L^2 validation passes) waits for the compare that needs it, so the
      # ground truth and the ladder, which settle more, come first.
      step "joint probe, default budget"
      default_probe || continue
      step "joint probe at T ($T_EXAMPLES examples)"
      floe probe --score-run "$score" --schedule joint "${at_T[@]}" "${common[@]}" \
        > "$out/probe-T-$tag.json" || continue
    fi
    if wants ladder; then
      for w in $LADDER; do
        step "analyze W=$w"
        analysis "$out/analyze-$tag-$w.json" --max-samples "$w" || continue 2
      done
    fi
    w_max=${LADDER##* }
    big=$(run_of "$out/analyze-$tag-$w_max.json" 2>/dev/null)
    cmp=(--ks "$KS" --seeds "$SEEDS" --seed "$EVAL_SEED" --tasks '' "${at_T[@]}" "${common[@]}"
         ${STORAGE:+--storage "$STORAGE"})
    if wants compare; then
      step "fair compare at T (policies of the W=$w_max analysis)"
      floe compare --score-run "$big" --probe-run "$(run_of "$out/probe-T-$tag.json")" --data "$data" \
        --policies floe,probe,adapter-norm,lora-drop,deepest "${cmp[@]}" > "$out/compare-T-$tag.json" || continue
      # The default-budget probe's columns need no ladder: their layers come from the probe, so they
      # take the W=64 analysis as score run, and share their trainings with issue 20's setting at T
      # (BUDGET=T bench/calibration.sh: the same train runs).
      step "fair compare at T, the default-budget probe's column"
      floe compare --score-run "$score" --probe-run "$(run_of "$out/probe-default-$tag.json")" --data "$data" \
        --policies probe --no-include-all "${cmp[@]}" > "$out/compare-T-probe-default-$tag.json" || continue
      step "the default-budget probe's set search (the same run, the search added)"
      default_probe --set-search || continue
      step "fair compare at T, the default-budget set search's set"
      floe compare --score-run "$score" --probe-run "$(run_of "$out/probe-default-$tag.json")" --data "$data" \
        --policies probe-set --no-include-all "${cmp[@]}" > "$out/compare-T-probe-set-$tag.json" || continue
    fi
    if wants judge; then
      step "the compare at T judged by $JUDGE_TASKS (lm-eval, $JUDGE_LIMIT items each; the same trainings)"
      floe compare --score-run "$big" --probe-run "$(run_of "$out/probe-T-$tag.json")" --data "$data" \
        --policies floe,probe,adapter-norm,lora-drop,deepest "${cmp[@]}" --tasks "$JUDGE_TASKS" \
        --limit "$JUDGE_LIMIT" > "$out/compare-T-judged-$tag.json" || continue
    fi
    if wants full-probe && [ -n "$FULL_LAYERS" ]; then
      step "full probe at T, layers $FULL_LAYERS"
      floe probe --score-run "$score" --layers "$FULL_LAYERS" --seeds 42,43 "${at_T[@]}" "${common[@]}" \
        ${STORAGE:+--storage "$STORAGE"} > "$out/probe-T-full-$tag.json" || continue
    fi
    step done
  done
  general="$out/analyze-${model##*/}-general-${LADDER##* }.json"
  if wants paper-protocol && [ -s "$general" ] && [[ " ${DATASETS:-general medical} " == *" medical "* ]]; then
    tag="${model##*/}-general-to-medical"
    step "the paper's protocol: the general warm-up's selection, trained and judged on medical at T"
    floe compare --score-run "$(run_of "$general")" --data medical \
      --policies "$PAPER_POLICIES" --no-include-all --ks "$KS" --seeds "$SEEDS" --seed "$EVAL_SEED" \
      --tasks '' "${at_T[@]}" "${common[@]}" ${STORAGE:+--storage "$STORAGE"} > "$out/compare-T-$tag.json" || continue
    if [ -n "$JUDGE_TASKS" ]; then
      step "the paper's protocol judged by $JUDGE_TASKS (the same trainings)"
      floe compare --score-run "$(run_of "$general")" --data medical \
        --policies "$PAPER_POLICIES" --no-include-all --ks "$KS" --seeds "$SEEDS" --seed "$EVAL_SEED" \
        --tasks "$JUDGE_TASKS" --limit "$JUDGE_LIMIT" "${at_T[@]}" "${common[@]}" ${STORAGE:+--storage "$STORAGE"} \
        > "$out/compare-T-judged-$tag.json"
    fi
  fi
done
