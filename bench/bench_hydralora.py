"""HydraLoRA (M=4) vs peft LoRA on the same layers and rank, SmolLM2 on CPU.

Step time: both models live in one process and alternate steps, so machine noise hits
both alike; the figure is the ratio of medians. Peak memory: each variant trains in a
fresh process; the kernel's RSS high-water mark is reset after loading (Linux), so the
peak is the training steps'. Reported as the ratio of the steps' extra memory over the
loaded model (activations, gradients, optimizer state) and of the whole-process peak.

    .venv/bin/python -m bench.bench_hydralora [--steps 6] [--batch 4] [--length 256]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from bench.common import current_rss_mib, in_subprocess, peak_rss_mib, reset_peak_rss, save
from floe.models.load import DEFAULT_MODEL

TARGETS = ["gate", "up", "down"]


def build(kind: str, r: int = 8):
    from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora
    from floe.models import arch
    from floe.models.load import load_model
    model, _ = load_model(DEFAULT_MODEL, "cpu")
    torch.manual_seed(0)
    if kind == "hydra":
        apply_hydralora(model, HydraLoraConfig(r=r, experts=4, dropout=0.05, targets=TARGETS))
    else:
        from peft import LoraConfig, get_peft_model
        names = [arch.role_suffix(model.config, t).split(".")[-1] for t in TARGETS]
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=32, lora_dropout=0.05,
                                                 target_modules=names))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def step(model, opt, batch):
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _batch(batch: int, length: int):
    return torch.randint(0, 49152, (batch, length), generator=torch.Generator().manual_seed(0))


def memory_child(kind: str, batch: int, length: int) -> None:
    model, opt = build(kind)
    x = _batch(batch, length)
    gc.collect()
    reset = reset_peak_rss()  # drop the load transient from the high-water mark
    loaded = current_rss_mib() if reset else peak_rss_mib()
    for _ in range(2):
        step(model, opt, x)
    print(json.dumps({"loaded_mib": loaded, "peak_mib": peak_rss_mib(), "peak_reset": reset}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        return memory_child(a.child, a.batch, a.length)

    x = _batch(a.batch, a.length)
    models = {k: build(k) for k in ("lora", "hydra")}
    times = {k: [] for k in models}
    for k in models:
        step(*models[k], x)  # warm-up
    for _ in range(a.steps):
        for k, (model, opt) in models.items():
            start = time.perf_counter()
            step(model, opt, x)
            times[k].append(time.perf_counter() - start)
    del models
    mem = {k: in_subprocess("bench.bench_hydralora", "--child", k, "--batch", str(a.batch),
                            "--length", str(a.length)) for k in ("lora", "hydra")}
    med = {k: statistics.median(v) for k, v in times.items()}
    extra = {k: m["peak_mib"] - m["loaded_mib"] for k, m in mem.items()}
    result = {
        "shape": f"SmolLM2-135M, CPU fp32, batch {a.batch} x {a.length}, r=8, targets gate/up/down",
        "threads": torch.get_num_threads(),
        "step_s": med, "step_time_ratio": med["hydra"] / med["lora"],
        "peak_mib": {k: m["peak_mib"] for k, m in mem.items()},
        "step_extra_mib": extra,
        "peak_ratio": mem["hydra"]["peak_mib"] / mem["lora"]["peak_mib"],
        "peak_reset": all(m["peak_reset"] for m in mem.values()),
        "step_extra_ratio": extra["hydra"] / extra["lora"] if extra["lora"] > 0 else None,
    }
    print(json.dumps(result, indent=2))
    save("hydralora_vs_lora_cpu", result)


if __name__ == "__main__":
    main()
