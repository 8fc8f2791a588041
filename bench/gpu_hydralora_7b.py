"""HydraLoRA (M=4) vs peft LoRA on a LLaMA-2-7B-shaped model on one GPU (ANCHORS.md setup).

Random bf16 weights built from a config (no download), sdpa attention, r=8 on gate/up/down,
AdamW, no gradient checkpointing; median step after warm-up; peak =
torch.cuda.max_memory_allocated. Both variants in one run, layer sets as in ANCHORS.md.

    python -m bench.gpu_hydralora_7b [--batch 1 8] [--steps 10]
Needs only torch, transformers, peft (present on the lent GPU machine).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

LAYER_SETS = {"all 32": list(range(32)), "top 16": list(range(16, 32)),
              "top 8": list(range(24, 32)), "bottom 8": list(range(8))}


def llama7b(n_layers: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=n_layers,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      attn_implementation="sdpa")
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model


def attach(model, kind: str, layers: list[int]):
    if kind == "hydra":
        from floe.hydralora import HydraLoraConfig, apply_hydralora
        apply_hydralora(model, HydraLoraConfig(r=8, experts=4, targets=["gate", "up", "down"],
                                               layers=layers))
        return model
    from peft import LoraConfig, get_peft_model
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05,
                                            target_modules=["gate_proj", "up_proj", "down_proj"],
                                            layers_to_transform=layers))


def measure(kind: str, layers: list[int], batch: int, steps: int) -> dict:
    torch.cuda.empty_cache()
    model = attach(llama7b(), kind, layers)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(0, 32000, (batch, 512), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    out = {"step_s": step, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
           "tokens_per_s": batch * 512 / step}
    del model, opt
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sets", nargs="+", default=list(LAYER_SETS))
    a = ap.parse_args()
    rows = []
    for batch in a.batch:
        for name in a.sets:
            lora = measure("lora", LAYER_SETS[name], batch, a.steps)
            hydra = measure("hydra", LAYER_SETS[name], batch, a.steps)
            rows.append({"layers": name, "batch": batch, "lora": lora, "hydra": hydra,
                         "time_ratio": hydra["step_s"] / lora["step_s"],
                         "memory_ratio": hydra["peak_gib"] / lora["peak_gib"]})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}))


if __name__ == "__main__":
    main()
