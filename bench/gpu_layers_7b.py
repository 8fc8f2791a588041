"""Step time and peak GPU memory against the number and position of adapted layers on a
LLaMA-2-7B-shaped model (paper Fig. 1b; docs/plan.md has reference figures).

Random bf16 weights from a LlamaConfig (32 layers, hidden 4096, FFN 11008, vocab 32000,
sdpa attention), AdamW, bf16 autocast (as floe.pipeline.train on CUDA), no gradient checkpointing;
batch 1 and 8 x 512 tokens. Each configuration is measured with HydraLoRA (r=8, M=4) and
plain peft LoRA (r=8) on gate/up/down, dropout 0.05, side by side in one process: the
HydraLoRA/peft step and peak ratios (targets <= 1.15x, <= 1.05x) and the layer rows of
reference rows (docs/plan.md) in one run. Median step (forward + backward + optimizer)
after warm-up; peak = torch.cuda.max_memory_allocated. Writes bench/results/gpu_layers_7b.json.

Needs only torch, transformers, peft and floe.adapters.hydralora (no datasets/optuna).
Usage: python bench/gpu_layers_7b.py [--steps 10] [--tiny]   (--tiny: a small shape, any device)
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import LLAMA_7B, LLAMA_TINY, save  # noqa: E402
from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora  # noqa: E402

# The paper's adapter dropout: with dropout an adapter's input copy is what autograd keeps,
# so memory comparisons without it would miss what HydraLoRA's router adds.
DROPOUT = 0.05
def configs(n: int) -> dict[str, list[int]]:
    return {f"all {n}": list(range(n)), f"top {n // 2}": list(range(n // 2, n)),
            f"top {n // 4}": list(range(n - n // 4, n)), f"bottom {n // 4}": list(range(n // 4))}


def build(shape: dict, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**shape, attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model


def attach(model, kind: str, layers: list[int]):
    if kind == "hydralora":
        apply_hydralora(model, HydraLoraConfig(r=8, experts=4, dropout=DROPOUT, layers=layers))
        return model
    from peft import LoraConfig, get_peft_model
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=DROPOUT,
                                            target_modules=["gate_proj", "up_proj", "down_proj"],
                                            layers_to_transform=layers))


def step_stats(model, batch: int, seq: int, steps: int, device) -> dict:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    model.train()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(steps + 3):  # 3 warm-up steps
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=ids, labels=ids).loss  # as floe.pipeline.train runs on CUDA
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"step_s": step, "peak_bytes": peak, "tokens_per_s": batch * seq / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="small shape for a smoke test")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--seq", type=int, default=512)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = LLAMA_TINY if args.tiny else LLAMA_7B
    seq = 64 if args.tiny else args.seq
    rows = []
    for name, layers in configs(shape["num_hidden_layers"]).items():
        for kind in ("peft-lora", "hydralora"):
            for batch in [int(b) for b in args.batches.split(",")]:
                torch.manual_seed(0)
                model = attach(build(shape, device, dtype), kind, layers)
                stats = step_stats(model, batch, seq, args.steps, device)
                rows.append({"config": name, "layers": layers, "adapter": kind, "batch": batch,
                             "seq": seq, **stats})
                peak = f"{stats['peak_bytes'] / 2**30:.1f} GiB" if stats["peak_bytes"] else "n/a"
                print(f"{name:>10} {kind:>9} batch {batch}x{seq}: step {stats['step_s']:.3f} s, "
                      f"peak {peak}, {stats['tokens_per_s']:,.0f} tokens/s", flush=True)
                del model
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    # HydraLoRA vs peft LoRA on the same layers and batch (targets: <= 1.15x step, <= 1.05x peak).
    by = {(r["config"], r["adapter"], r["batch"]): r for r in rows}
    for r in rows:
        if r["adapter"] == "hydralora":
            ref = by[(r["config"], "peft-lora", r["batch"])]
            r["step_vs_peft"] = r["step_s"] / ref["step_s"]
            r["peak_vs_peft"] = r["peak_bytes"] / ref["peak_bytes"] if r["peak_bytes"] else None
            print(f"{r['config']:>10} batch {r['batch']}: HydraLoRA/peft step x{r['step_vs_peft']:.2f}"
                  + (f", peak x{r['peak_vs_peft']:.2f}" if r["peak_vs_peft"] else ""))
    out = save("gpu_layers_tiny" if args.tiny else "gpu_layers_7b",
               {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__, "shape": shape, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
