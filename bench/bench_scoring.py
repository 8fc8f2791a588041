"""FLoE scoring time against the bare passes it needs, measured in the same run.

Scoring = Taylor (one forward+backward per batch, weight gradients of the projections),
Fisher (one forward+backward per batch, activation gradients only), greedy search,
refinement, and least-squares tuning (refined and greedy masks, in one pass). The
baseline is the bare passes that cannot be avoided: two plain forward+backward passes per
batch (one for the base-model gradients, one for the adapted-model mask gradients) and
three plain forward passes per batch for the tuning (the clean residual stream and one
masked stream per mask set).

    .venv/bin/python -m bench.bench_scoring [--model smollm2-135m] [--samples 64] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from bench.common import save
from floe.models.load import DEFAULT_MODEL


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bare_forward_backward(model, batches, weights: bool):
    """One plain forward+backward per batch: weight grads of the projections, or only
    activation grads (embeddings as the leaf), like Taylor and Fisher respectively."""
    from floe.models import arch
    shape = arch.shape_of(model.config)
    params = [arch.projection(model, k, r).weight for k in range(shape.n_layers)
              for r in arch.ROLES] if weights else []
    for p in params:
        p.requires_grad_(True)
    for b in batches:
        emb = model.get_input_embeddings()(b["input_ids"]).detach().requires_grad_(not weights)
        model(inputs_embeds=emb, attention_mask=b["attention_mask"], labels=b["labels"]).loss.backward()
    for p in params:
        p.grad = None
        p.requires_grad_(False)


@torch.no_grad()
def bare_forwards(model, batches, n: int):
    for _ in range(n):
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])


def time_scoring(model, batches, dev, beta: float = 0.5) -> tuple[dict, dict]:
    """(seconds per FLoE stage, seconds of the bare passes it needs), in one process."""
    from floe.method.fisher import mask_fisher
    from floe.method.refine import refine_masks
    from floe.method.search import greedy_masks
    from floe.method.taylor import average_costs, taylor_costs
    from floe.method.tune import tune_mask_sets

    bare_forward_backward(model, batches[:1], weights=True)  # warm-up of kernels/allocator
    base = {"fwd_bwd_weights": timed(lambda: bare_forward_backward(model, batches, True), dev),
            "fwd_bwd_activations": timed(lambda: bare_forward_backward(model, batches, False), dev),
            "forward_x3": timed(lambda: bare_forwards(model, batches, 3), dev)}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # the peak reported is the scoring's
    out, stage = {}, {}
    stage["taylor"] = timed(lambda: out.update(cost=taylor_costs(model, batches)), dev)
    stage["fisher"] = timed(lambda: out.update(tau=mask_fisher(model, batches)), dev)
    ch, cn, th, tn = (t.float().cpu() for t in (*out["cost"], *out["tau"]))
    t_h, t_f = average_costs(ch, cn)
    stage["search"] = timed(lambda: out.update(greedy=greedy_masks(th, tn, t_h, t_f, beta)), dev)
    budget = beta * float(ch.double().sum() + cn.double().sum())
    stage["refine"] = timed(lambda: out.update(ref=refine_masks(th, tn, ch, cn, *out["greedy"], budget)), dev)
    r = out["ref"]
    stage["tune"] = timed(lambda: tune_mask_sets(
        model, batches, [(r.keep_heads, r.keep_neurons), out["greedy"]]), dev)
    return stage, base


def build(model_name: str, device: str, samples: int, batch_size: int, max_length: int):
    from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora
    from floe.models.load import load_model
    from floe.pipeline.data import DataConfig, batches, load_split, tokenize
    model, tok = load_model(model_name, device)
    torch.manual_seed(0)
    apply_hydralora(model, HydraLoraConfig(dropout=0.0))
    with torch.no_grad():  # a warmed-up-like adapter: small non-zero B
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=1e-3)
    model.requires_grad_(False)
    rows = tokenize(tok, load_split(DataConfig(max_samples=samples, val_samples=0,
                                               max_length=max_length)).train, max_length)
    rows.sort(key=lambda r: len(r["input_ids"]))
    dev = next(model.parameters()).device
    return model, [{k: v.to(dev) for k, v in b.items()} for b in batches(rows, batch_size, tok.pad_token_id)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    a = ap.parse_args()
    model, batches = build(a.model, a.device, a.samples, a.batch_size, a.max_length)
    dev = next(model.parameters()).device
    stage, base = time_scoring(model, batches, dev)
    total, bare = sum(stage.values()), sum(base.values())
    result = {"model": a.model, "device": str(dev), "threads": torch.get_num_threads(),
              "samples": a.samples, "batch_size": a.batch_size, "n_batches": len(batches),
              "tokens": int(sum(b["attention_mask"].sum() for b in batches)),
              "stages_s": stage, "bare_s": base, "scoring_s": total, "bare_total_s": bare,
              "ratio": total / bare,
              "ratio_taylor": stage["taylor"] / base["fwd_bwd_weights"],
              "ratio_fisher": stage["fisher"] / base["fwd_bwd_activations"],
              "ratio_tune": stage["tune"] / base["forward_x3"]}
    print(json.dumps(result, indent=2))
    save(f"scoring_{a.model}_{dev.type}", result)


if __name__ == "__main__":
    main()
