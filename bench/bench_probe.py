"""Time of the default `floe probe` (every layer of SmolLM2 adapted alone, one seed, the
probe's default budget), measured on a few layers and extrapolated.

A cell's cost is dominated by the backward pass, which runs from the loss down to the
adapted layer: it grows linearly with the number of layers above and including the
adapted one. So a line t(l) = a + b * (L - l) fitted through the cells measured (each a
full cell: model load, validation before and after, training) predicts every layer; the
probe's total is its sum. As the baseline in the same run, one all-layer training of the
same budget (leave-one-out's reference cell) is timed too: the ratio total / baseline
carries over between machines better than seconds do. CPU seconds are recorded too: on a
loaded machine the wall time says little, while CPU time / threads estimates a quiet one.

Runs in a fresh cache (the converted model is shared). Prints JSON and writes
bench/results/probe.json.

Usage: .venv/bin/python -m bench.bench_probe [--layers 0,15,29] [--model smollm2-135m]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

from bench.common import fresh_cache, save
from floe.models.load import DEFAULT_MODEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default="general")
    parser.add_argument("--layers", default="0,15,29", help="layers whose cells are timed")
    args = parser.parse_args()

    fresh_cache("floe-bench-probe-")

    import dataclasses

    import numpy as np
    import torch

    from floe.adapters.hydralora import HydraLoraConfig
    from floe.experiments.probe import PROBE_BUDGET, ProbeConfig, cell_layers
    from floe.pipeline.data import DataConfig
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.sparse import SparseConfig, model_shape, run_sparse_training, summary_of
    from floe.pipeline.train import TrainConfig

    model = ModelConfig(model=args.model, device="cpu")
    data = DataConfig(data=args.data, **PROBE_BUDGET["data"])
    training = TrainConfig(**PROBE_BUDGET["train"])
    seed = ProbeConfig().seeds[0]
    n_layers = model_shape(model).n_layers

    def timed_cell(layers: list[int]) -> dict:
        load = os.getloadavg()[0]
        cpu = os.times()
        start = time.perf_counter()
        setup = Setup(model, data, HydraLoraConfig(), dataclasses.replace(training, seed=seed))
        run = run_sparse_training(setup, SparseConfig(layers=layers), show_progress=False)
        wall = time.perf_counter() - start
        cpu_s = sum(os.times()[:2]) - sum(cpu[:2])  # user + system CPU seconds of this process
        s = summary_of(run)
        return {"layers": layers if len(layers) < n_layers else "all", "wall_s": wall, "cpu_s": cpu_s,
                "train_s": s["seconds"], "steps": s["steps"], "load_before": load,
                "load_after": os.getloadavg()[0],
                "gain": s["val_loss_before"] - s["val_loss_after"]}

    probed = [int(k) for k in args.layers.split(",")]
    cells = {k: timed_cell(cell_layers(k, "single", n_layers)) for k in probed}
    baseline = timed_cell(list(range(n_layers)))
    depth = np.array([n_layers - k for k in probed], dtype=float)
    walls = np.array([cells[k]["wall_s"] for k in probed])
    cpus = np.array([cells[k]["cpu_s"] for k in probed])

    def projected(values) -> float:
        b, a = np.polyfit(depth, values, 1) if len(probed) > 1 else (0.0, float(values[0]))
        return float(sum(a + b * (n_layers - k) for k in range(n_layers)))
    total, total_cpu = projected(walls), projected(cpus)
    threads = torch.get_num_threads()
    result = {
        "model": args.model, "data": args.data, "n_layers": n_layers, "budget": PROBE_BUDGET,
        "cells": {str(k): v for k, v in cells.items()}, "all_layer_baseline": baseline,
        "predicted_probe_s": total, "predicted_probe_min": total / 60,
        "probe_over_baseline": total / baseline["wall_s"],
        # On a quiet machine the threads run in parallel: wall ~ CPU time / threads (an
        # upper bound on the speed-up, torch's 2-thread efficiency is below 1).
        "predicted_probe_cpu_s": total_cpu, "quiet_estimate_min": total_cpu / threads / 60,
        "threads": threads, "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version(),
        "torch": torch.__version__}
    print(json.dumps(result, indent=2))
    save("probe", result)


if __name__ == "__main__":
    main()
