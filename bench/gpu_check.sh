#!/usr/bin/env bash
# The one prepared GPU check, <= 8 minutes on one H200; everything it measures goes to $OUT as JSON:
#   cuda_tests.jsonl   figures the `cuda` tests record (bf16 vs fp32, CUDA vs CPU ranking,
#                      5-step training, plan vs measured peaks on SmolLM2 and the 7B shape)
#   cuda_tests.xml     their pass/fail (junit)
#   gpu_layers_7b.json step time and peak vs adapted layers, HydraLoRA vs peft LoRA (docs/plan.md rows)
#   gpu_score_7b.json  FLoE scoring of the 7B shape on 256 x 512 tokens vs the bare passes
#   gpu_check.json     the parts' exit codes and durations, and all of the above in one file
# Each part has its own time limit and a failing part does not stop the others.
#   bash bench/gpu_check.sh           # on the GPU machine, from the repo root
#   bash bench/gpu_check.sh --tiny    # smoke test anywhere: small shapes, the cuda tests skip
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export FLOE_GPU_RESULTS="$OUT/cuda_tests.jsonl" FLOE_CACHE=${FLOE_CACHE:-$OUT/cache}
TINY=""
[ "${1:-}" = "--tiny" ] && TINY="--tiny"
rm -f "$OUT/parts.jsonl" "$FLOE_GPU_RESULTS"

part() {  # part NAME SECONDS COMMAND...: run with a limit, log, record exit code and duration
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"part\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" >> "$OUT/parts.jsonl"
  tail -n 3 "$OUT/$name.log"
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"
part cuda_tests 210 "$PY" -m pytest -q -m cuda tests/test_cuda.py -rs --junitxml "$OUT/cuda_tests.xml"
part gpu_score_7b 120 "$PY" -m bench.gpu_score_7b $TINY --out "$OUT/gpu_score_7b.json"
part gpu_layers_7b 130 "$PY" bench/gpu_layers_7b.py --steps 5 $TINY
cp bench/results/gpu_layers_*.json "$OUT/" 2>/dev/null

"$PY" - "$OUT" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def read(name):
    p = out / name
    if not p.exists():
        return None
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return json.loads(p.read_text())
layers = next((n for n in ("gpu_layers_7b.json", "gpu_layers_tiny.json") if (out / n).exists()), None)
summary = {"device": (out / "device.txt").read_text().strip(), "parts": read("parts.jsonl"),
           "cuda_tests": read("cuda_tests.jsonl"), "gpu_score_7b": read("gpu_score_7b.json"),
           "gpu_layers_7b": read(layers) if layers else None}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({"parts": summary["parts"]}, indent=2))
PYEOF
