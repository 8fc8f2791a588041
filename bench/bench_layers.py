"""Peak memory and step time against the number AND position of adapted layers (paper Fig. 1b).

SmolLM2-135M (30 layers) on CPU, HydraLoRA (r=8, M=4, gate/up/down), AdamW, fp32. Each
configuration runs in a fresh subprocess; after loading, the kernel's RSS high-water mark is
reset (Linux), so the peak is the training steps'; the peak above the RSS after loading the
model is the training overhead. Ratios are
against the all-layers configuration measured in the same run. Prints a table and writes
bench/results/layers_cpu.json.

Usage: .venv/bin/python -m bench.bench_layers [--batch 4] [--seq 128] [--steps 3]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time

from bench.common import current_rss_mib, in_subprocess, peak_rss_mib, reset_peak_rss, save
from floe.models.load import DEFAULT_MODEL

N = 30  # SmolLM2-135M layers
CONFIGS = {  # name: layers (number varies at the top; position varies at 8 layers)
    "all 30": list(range(N)),
    "top 15 (15-29)": list(range(15, N)),
    "top 8 (22-29)": list(range(22, N)),
    "middle 8 (11-18)": list(range(11, 19)),
    "bottom 8 (0-7)": list(range(8)),
    "top 4 (26-29)": list(range(26, N)),
    "top 1 (29)": [29],
}


def measure(layers: list[int], batch: int, seq: int, steps: int) -> dict:
    """One configuration, in this (fresh) process."""
    import torch

    from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora, trainable_parameters
    from floe.models.load import load_model

    torch.manual_seed(0)
    model, _ = load_model(DEFAULT_MODEL, "cpu")
    gc.collect()
    reset_peak_rss()  # the peak from here on is training's, not the loading transient's
    rss_loaded = int(current_rss_mib() * 2**20)
    apply_hydralora(model, HydraLoraConfig(layers=layers, dropout=0.0))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(100, 40000, (batch, seq), generator=torch.Generator().manual_seed(0))
    times = []
    for step in range(steps + 1):  # the first step warms up allocator and kernels
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
    peak = int(peak_rss_mib() * 2**20)
    return {"layers": layers, "step_s": statistics.median(times), "peak_rss_bytes": peak,
            "rss_after_load_bytes": rss_loaded, "overhead_bytes": peak - rss_loaded,
            "trainable_parameters": trainable_parameters(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(json.loads(args.child), args.batch, args.seq, args.steps)))
        return

    import torch
    print(f"SmolLM2-135M, CPU, {torch.get_num_threads()} threads, batch {args.batch} x {args.seq}, "
          f"median of {args.steps} steps; HydraLoRA r=8 M=4 on gate/up/down", flush=True)
    rows = {}
    for name, layers in CONFIGS.items():
        rows[name] = in_subprocess("bench.bench_layers", "--child", json.dumps(layers),
                                   "--batch", str(args.batch), "--seq", str(args.seq),
                                   "--steps", str(args.steps))
        r = rows[name]
        print(f"{name:>18}: step {r['step_s']:.2f} s, peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB "
              f"(+{r['overhead_bytes'] / 2**20:.0f} MiB over the loaded model), "
              f"{r['trainable_parameters']:,} trainable", flush=True)
    ref = rows["all 30"]
    print("\nratios vs all 30 layers (same run):")
    for name, r in rows.items():
        r["step_ratio"] = r["step_s"] / ref["step_s"]
        r["peak_ratio"] = r["peak_rss_bytes"] / ref["peak_rss_bytes"]
        r["overhead_ratio"] = r["overhead_bytes"] / ref["overhead_bytes"]
        print(f"{name:>18}: step x{r['step_ratio']:.2f}, peak x{r['peak_ratio']:.2f}, "
              f"training overhead x{r['overhead_ratio']:.2f}")
    payload = {"model": DEFAULT_MODEL, "device": "cpu", "threads": torch.get_num_threads(),
               "batch": args.batch, "seq": args.seq, "steps": args.steps, "torch": torch.__version__,
               "host": platform.node(), "configs": rows}
    print(f"wrote {save('layers_cpu', payload)}")


if __name__ == "__main__":
    main()
