"""Bounded-memory Taylor scoring: peak memory and time against the number of passes N
(``--taylor-chunks``), on a mid-size random Llama on CPU, each N in a fresh process.

Time: wall and CPU seconds of ``taylor_costs`` (one thread; CPU time is the steadier
figure on a shared machine). Peak = the process's resident-set high-water mark during ``taylor_costs`` above the level
after loading (the kernel's mark is reset after the model and batches exist). Each row
also gives the plan's estimate of the same stage (floe.models.memory.taylor_memory, fp32)
and whether the costs equal those of N = 1.

    .venv/bin/python -m bench.bench_taylor_chunks [--chunks 1,2,4,8] [--layers 8] [--tiny]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import torch

from bench.common import current_rss_mib, in_subprocess, peak_rss_mib, reset_peak_rss, save

MID = dict(hidden_size=768, intermediate_size=2048, num_attention_heads=12, num_key_value_heads=12,
           vocab_size=4000, max_position_embeddings=512)


def one(chunks: int, layers: int, batches: int, batch: int, length: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from floe.method.taylor import taylor_costs
    from floe.models.memory import GIB, dims_of, taylor_memory
    torch.manual_seed(0)
    config = LlamaConfig(**MID, num_hidden_layers=layers)
    model = LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(batches):
        ids = torch.randint(0, config.vocab_size, (batch, length), generator=g)
        data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    base = current_rss_mib()
    exact = reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    heads, neurons = taylor_costs(model, data, chunks=chunks)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    digest = hashlib.sha256(torch.cat([heads.flatten(), neurons.flatten()]).numpy().tobytes()).hexdigest()[:16]
    plan = taylor_memory(dims_of(config), batch * length, 4, chunks)
    weights = dims_of(config).parameters * 4
    return {"chunks": chunks, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "peak_above_load_mib": peak_rss_mib() - base,
            "peak_reset_exact": exact,
            "plan_above_weights_mib": (plan.peak - weights) / 2**20,
            "plan_buffers_mib": plan.parts["gradient buffers"] / 2**20,
            "plan_peak_gib": plan.peak / GIB, "costs_sha": digest,
            "costs_sum": float(heads.double().sum() + neurons.double().sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", default="1,2,4,8")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="2 layers, chunks 1,2: a smoke test")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process
    a = ap.parse_args()
    if a.tiny:
        a.layers, a.chunks, a.batches, a.length = 2, "1,2", 1, 16
    if a.one is not None:
        torch.set_num_threads(1)
        print(json.dumps(one(a.one, a.layers, a.batches, a.batch, a.length)))
        return
    rows = []
    for n in [int(x) for x in a.chunks.split(",")]:
        row = in_subprocess("bench.bench_taylor_chunks", "--one", str(n), "--layers", str(a.layers),
                            "--batches", str(a.batches), "--batch", str(a.batch), "--length", str(a.length))
        rows.append(row)
        print(f"N={n}: {row['seconds']:.2f} s ({row['cpu_seconds']:.2f} CPU-s), "
              f"peak {row['peak_above_load_mib']:.0f} MiB above load "
              f"(plan {row['plan_above_weights_mib']:.0f} MiB, buffers {row['plan_buffers_mib']:.0f} MiB)",
              file=sys.stderr, flush=True)
    first = rows[0]
    for r in rows:
        r["time_vs_one_pass"] = r["seconds"] / first["seconds"]
        r["cpu_time_vs_one_pass"] = r["cpu_seconds"] / first["cpu_seconds"]
        r["peak_vs_one_pass"] = r["peak_above_load_mib"] / first["peak_above_load_mib"]
        r["same_costs"] = r["costs_sha"] == first["costs_sha"]
    out = {"model": {**MID, "num_hidden_layers": a.layers}, "tokens_per_batch": a.batch * a.length,
           "batches": a.batches, "rows": rows}
    save("bench_taylor_chunks", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
