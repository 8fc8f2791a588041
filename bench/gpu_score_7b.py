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

from bench.bench_scoring import bare_forward_backward, bare_forwards, timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tiny", action="store_true", help="small shape, 16 x 64 tokens, any device")
    a = ap.parse_args()
    if a.tiny:
        a.sequences, a.length, a.batch_size, a.layers = 16, 64, 8, 4
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    from transformers import LlamaConfig, LlamaForCausalLM

    from floe.fisher import mask_fisher
    from floe.hydralora import HydraLoraConfig, apply_hydralora
    from floe.refine import refine_masks
    from floe.search import greedy_masks
    from floe.taylor import average_costs, taylor_costs
    from floe.tune import tune_mask_sets

    shape = (dict(hidden_size=256, intermediate_size=688, num_attention_heads=4,
                  num_key_value_heads=4) if a.tiny else
             dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                  num_key_value_heads=32))
    cfg = LlamaConfig(**shape, num_hidden_layers=a.layers, vocab_size=32000,
                      attn_implementation="sdpa")
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
        ids = torch.randint(0, 32000, (a.batch_size, a.length), device=dev, generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    cuda = dev.type == "cuda"
    bare_forward_backward(model, batches[:1], True)
    base = {"fwd_bwd_weights": timed(lambda: bare_forward_backward(model, batches, True), dev),
            "fwd_bwd_activations": timed(lambda: bare_forward_backward(model, batches, False), dev),
            "forward_x3": timed(lambda: bare_forwards(model, batches, 3), dev)}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out, stage = {}, {}
    stage["taylor"] = timed(lambda: out.update(cost=taylor_costs(model, batches)), dev)
    stage["fisher"] = timed(lambda: out.update(tau=mask_fisher(model, batches)), dev)
    ch, cn = (t.float().cpu() for t in out["cost"])
    th, tn = (t.float().cpu() for t in out["tau"])
    t_h, t_f = average_costs(ch, cn)
    stage["search"] = timed(lambda: out.update(greedy=greedy_masks(th, tn, t_h, t_f, 0.5)), dev)
    budget = 0.5 * float(ch.double().sum() + cn.double().sum())
    stage["refine"] = timed(lambda: out.update(ref=refine_masks(th, tn, ch, cn, *out["greedy"], budget)), dev)
    r = out["ref"]
    stage["tune"] = timed(lambda: tune_mask_sets(
        model, batches, [(r.keep_heads, r.keep_neurons), out["greedy"]]), dev)
    total, bare = sum(stage.values()), sum(base.values())
    print(json.dumps({"device": torch.cuda.get_device_name() if cuda else "cpu",
                      "tokens": a.sequences * a.length, "stages_s": stage, "bare_s": base,
                      "scoring_s": total, "ratio": total / bare,
                      "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None},
                     indent=2))


if __name__ == "__main__":
    main()
