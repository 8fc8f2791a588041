"""FLoE total time (layer selection + sparse training on k layers) against full-layer
training on the same data (paper Table 5), measured in one run on SmolLM2.

Selection = warm-up on a sample of the data + FLoE scoring (``floe.experiments.study.run_analysis``);
then HydraLoRA on the top-k layers and on all layers, same data, rank and budget. Runs
in a fresh cache so nothing is reused. Prints a table and writes
bench/results/total_time.json.

Usage: .venv/bin/python -m bench.bench_total_time [--k 8] [--samples 64] [--warmup-ratio 0.3]
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time

from bench.common import fresh_cache, save
from floe.models.load import DEFAULT_MODEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default="general")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--samples", type=int, default=64, help="training examples")
    parser.add_argument("--warmup-ratio", type=float, default=0.3, help="share used for selection")
    parser.add_argument("--score-samples", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    fresh_cache("floe-bench-")

    import torch

    from floe.adapters.hydralora import HydraLoraConfig
    from floe.experiments.study import run_analysis
    from floe.pipeline.data import DataConfig
    from floe.pipeline.score import ScoreConfig
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.sparse import SparseConfig, run_sparse_training, summary_of
    from floe.pipeline.train import TrainConfig

    model = ModelConfig(model=args.model, device=args.device)
    data = DataConfig(data=args.data, max_samples=args.samples, val_samples=16, max_length=128)
    adapter, training = HydraLoraConfig(), TrainConfig(epochs=args.epochs, lr=1e-3)

    start = time.perf_counter()
    setup = Setup(model, data, adapter, training)
    score = run_analysis(setup.replace(data=dataclasses.replace(data, ratio=args.warmup_ratio)),
                         ScoreConfig(score_samples=args.score_samples), show_progress=False)
    selection_s = time.perf_counter() - start
    print(f"selection (warm-up on {args.warmup_ratio:.0%} + scoring): {selection_s:.1f} s", flush=True)

    timings = {}
    for name, sparse in (("sparse", SparseConfig(score_run=score.id, policy="floe", k=args.k)),
                         ("full", SparseConfig(score_run=score.id, policy="all"))):
        start = time.perf_counter()
        run = run_sparse_training(setup, sparse, show_progress=False)
        timings[name] = {"wall_s": time.perf_counter() - start, **{
            k: summary_of(run)[k] for k in ("layers", "seconds", "steps", "val_loss_after",
                                            "trainable_parameters", "peak_memory_bytes")}}
        print(f"{name} training ({len(timings[name]['layers'])} layers): "
              f"{timings[name]['wall_s']:.1f} s wall, {timings[name]['seconds']:.1f} s in the loop, "
              f"val loss {timings[name]['val_loss_after']:.4f}", flush=True)

    total = selection_s + timings["sparse"]["wall_s"]
    full = timings["full"]["wall_s"]
    print(f"\nFLoE total {total:.1f} s vs full-layer {full:.1f} s: x{total / full:.2f} "
          f"({(1 - total / full):+.0%} saved); sparse training alone x{timings['sparse']['wall_s'] / full:.2f}")
    payload = {"model": args.model, "data": args.data, "k": args.k, "samples": args.samples,
               "warmup_ratio": args.warmup_ratio, "epochs": args.epochs,
               "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
               if args.device == "auto" else args.device,
               "threads": torch.get_num_threads(), "host": platform.node(),
               "score_timings": score.read_json("timings.json"), "selection_s": selection_s,
               "training": timings, "floe_total_s": total, "full_layer_s": full,
               "ratio": total / full}
    print(f"wrote {save('total_time', payload)}")


if __name__ == "__main__":
    main()
