"""FLoE scoring of a LLaMA-2-7B-shaped model (random bf16 weights) on one GPU, 256 x 512
tokens, against the bare forward/backward passes it needs (see bench_scoring.py).

    python -m bench.gpu_score_7b [--sequences 256] [--length 512] [--batch-size 8]
    python -m bench.gpu_score_7b --tiny   # a small shape on any device: a smoke test
Needs torch, transformers (present on the lent GPU machine) and this repo's floe/.
"""
from __future__ import annotations

import argparse
import json

import torch

from bench.bench_scoring import time_scoring
from bench.common import LLAMA_7B, LLAMA_TINY


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tiny", action="store_true", help="small shape, 16 x 64 tokens, any device")
    ap.add_argument("--out", help="also write the JSON to this file")
    a = ap.parse_args()
    if a.tiny:
        a.sequences, a.length, a.batch_size, a.layers = 16, 64, 8, 4
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    from transformers import LlamaConfig, LlamaForCausalLM

    from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora

    shape = {**(LLAMA_TINY if a.tiny else LLAMA_7B), "num_hidden_layers": a.layers}
    cfg = LlamaConfig(**shape, attn_implementation="sdpa")
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    apply_hydralora(model, HydraLoraConfig(dropout=0.0))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=1e-3)
    model.requires_grad_(False)
    g = torch.Generator(device=dev).manual_seed(0)
    batches = []
    for _ in range(a.sequences // a.batch_size):
        ids = torch.randint(0, cfg.vocab_size, (a.batch_size, a.length), device=dev, generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    cuda = dev.type == "cuda"
    stage, base = time_scoring(model, batches, dev)
    total, bare = sum(stage.values()), sum(base.values())
    result = json.dumps({"device": torch.cuda.get_device_name() if cuda else "cpu",
                         "tokens": a.sequences * a.length, "stages_s": stage, "bare_s": base,
                         "scoring_s": total, "ratio": total / bare,
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None},
                        indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(result)
    print(result)


if __name__ == "__main__":
    main()
