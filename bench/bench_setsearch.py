"""The joint probe's set search and curves (issue 20) against its own training, in one run.

Runs the joint cheap probe (``floe probe --schedule joint``: one all-layer training per
seed, each layer's gain read with only its adapter on) with its set search turned on
(``--set-search``; off by default), from a fresh cache, and reads what probe.json records
of the search: the seconds of the joint trainings, of both searches (forward selection,
backward elimination) and of the curves (every ranking's predicted loss at each k), and
the validation passes they took. The figure is the ratio (search + curves) / training,
both timed in the same process (the issue's goal: <= 0.2). The probe's own cost (model
load, trainings, the singles' L validation passes) is printed beside it, and the
predicted cost of the search in passes (floe.experiments.cheap_probe.search_cost) beside
the passes taken.

Default: a tiny random Llama (hidden 64, ``--layers`` decoder layers) with the embedded
SmolLM2 tokenizer, on the probe's default data and budget (32 training + 16 validation
samples of at most 64 tokens, batch 4, lr 1e-3): seconds on a CPU. ``--model`` names any
other model (e.g. smollm2-135m: about L^2 validation passes per seed, minutes to an hour
on a CPU). Prints JSON and writes bench/results/setsearch.json.

Usage: nice .venv/bin/python -m bench.bench_setsearch [--layers 8] [--seeds 42] [--search-max-k K]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from bench.common import fresh_cache, save

TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512)


def tiny_model(folder: Path, n_layers: int) -> str:
    """A random Llama of ``n_layers`` layers with the embedded SmolLM2 tokenizer, saved."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from floe.models.load import convert_embedded
    tok = AutoTokenizer.from_pretrained(convert_embedded("smollm2-135m"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY, num_hidden_layers=n_layers, vocab_size=len(tok)))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (a random Llama, --layers deep) or a model name/path")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the tiny model")
    parser.add_argument("--data", default="general")
    parser.add_argument("--seeds", default="42", help="training seeds, comma-separated")
    parser.add_argument("--search-max-k", type=int, default=None)
    args = parser.parse_args()

    root = fresh_cache("floe-bench-setsearch-")

    from floe.adapters.hydralora import HydraLoraConfig
    from floe.experiments.cheap_probe import SetSearchConfig, run_cheap_probe, search_cost
    from floe.experiments.probe import PROBE_BUDGET, SUMMARY, ProbeConfig
    from floe.pipeline.data import DataConfig
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.train import TrainConfig

    model = tiny_model(root / "tiny-model", args.layers) if args.model == "tiny" else args.model
    setup = Setup(ModelConfig(model=model, device="cpu"), DataConfig(data=args.data, **PROBE_BUDGET["data"]),
                  HydraLoraConfig(), TrainConfig(**PROBE_BUDGET["train"]))
    probe = ProbeConfig(schedule="joint", seeds=[int(s) for s in args.seeds.split(",")])
    out: dict = {"model": args.model if args.model != "tiny" else f"tiny llama, {args.layers} layers, hidden 64",
                 "data": args.data, "seeds": probe.seeds, "machine": platform.processor() or platform.machine(),
                 "torch_threads": os.environ.get("OMP_NUM_THREADS"), "load_before": os.getloadavg()}

    t0, c0 = time.perf_counter(), _cpu()
    search = SetSearchConfig(set_search=True, search_max_k=args.search_max_k)  # off by default: on here
    run = run_cheap_probe(setup, probe, search=search, show_progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    summary = run.read_json(SUMMARY)
    found = summary["set_search"]
    n = len(found["ks"])
    searching = found["search_seconds"] + found["curve_seconds"]
    out.update({
        "n_layers": n, "wall_s": wall, "cpu_s": cpu,
        "probe_s": summary["seconds"],  # load, trainings, singles: the probe without the search
        "train_s": found["train_seconds"], "search_s": found["search_seconds"], "curve_s": found["curve_seconds"],
        "ratio_to_training": searching / found["train_seconds"],
        "ratio_to_probe": searching / summary["seconds"],
        "goal_ratio_to_training": 0.2,
        "validation_passes": found["validation_passes"],
        "passes_at_most": search_cost(n, found["search_max_k"], len(found["curves"]) - 2) * len(probe.seeds),
        "seconds_per_pass": searching / max(found["validation_passes"], 1),
        "better": found["better"], "mean_loss": found["mean_loss"], "suggested": found["suggested"],
        "base_loss": found["base_loss"], "all_loss": found["all_loss"],
        "loss_at_k": {name: dict(zip(found["ks"], curve)) for name, curve in found["curves"].items()},
        "load_after": os.getloadavg()})
    save("setsearch", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
