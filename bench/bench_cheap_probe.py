"""The cheap probe against FLoE's own cost and against the full probe, in one run.

On the probe's default data and budget (SmolLM2, 32 training + 16 validation samples of
at most 64 tokens, batch 4, 8 steps, lr 1e-3), this times:
- FLoE: the default warm-up (every layer, the analysis' TrainConfig) + default scoring on
  the same data sample (the baseline of the ratios);
- the cheap probe, schedule ``halving`` (one model load, successive halving) and schedule
  ``joint`` (one all-layer training, leave-one-in gains), each end to end; the joint
  probe without its set search (off by default; bench_setsearch.py times that);
- the full probe (every layer alone at the full budget) with one model load: the layers
  the halving trained at the full budget are reused (the same computation: one seed, the
  same training), the others trained here. Its time is not a goal; its ranking is the
  reference the cheap rankings are compared with (Spearman over all layers, and overlap
  of the top 8).

Runs in a fresh cache (the converted model is shared). Prints JSON and writes
bench/results/cheap_probe.json.

Usage: nice .venv/bin/python -m bench.bench_cheap_probe [--model smollm2-135m] [--data general]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from bench.common import fresh_cache, save
from floe.models.load import DEFAULT_MODEL


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default="general")
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--full-from", help="take the full probe's gains from this earlier result "
                        "of the same command (deterministic: the same data, budget and seed) "
                        "instead of training them again")
    parser.add_argument("--schedules", default="halving,joint",
                        help="the cheap schedules to time (comma-separated); without halving and --full-from "
                             "the full probe is not run and only the costs are compared")
    args = parser.parse_args()

    fresh_cache("floe-bench-cheap-")

    from floe.adapters.hydralora import HydraLoraConfig
    from floe.experiments.cheap_probe import SetSearchConfig, run_cheap_probe
    from floe.experiments.probe import PROBE_BUDGET, SUMMARY, ProbeConfig
    from floe.pipeline.data import DataConfig
    from floe.pipeline.policies import probe_ranking
    from floe.pipeline.score import ScoreConfig, run_score
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.train import TrainConfig
    from floe.pipeline.warmup import run_warmup

    model_cfg = ModelConfig(model=args.model, device="cpu")
    data = DataConfig(data=args.data, **PROBE_BUDGET["data"])
    training = TrainConfig(**PROBE_BUDGET["train"])
    adapter = HydraLoraConfig()
    out: dict = {"model": args.model, "data": args.data, "machine": platform.processor() or platform.machine(),
                 "torch_threads": os.environ.get("OMP_NUM_THREADS"), "load_before": os.getloadavg()}

    t0, c0 = time.perf_counter(), _cpu()
    warm = run_warmup(Setup(model_cfg, data, adapter, TrainConfig()), show_progress=False)
    run_score(warm, ScoreConfig(), "cpu", show_progress=False)
    out["floe"] = {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - c0}

    cheap = {}
    for schedule in args.schedules.split(","):
        probe = ProbeConfig(schedule=schedule, min_steps=args.min_steps)
        t0, c0 = time.perf_counter(), _cpu()
        run = run_cheap_probe(Setup(model_cfg, data, adapter, training), probe, show_progress=False,
                              search=SetSearchConfig(set_search=False))  # the probe alone (the default)
        summary = run.read_json(SUMMARY)
        cheap[schedule] = {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - c0,
                           "ranking": probe_ranking(summary), "train_steps": summary["train_steps"],
                           "rungs": [{"steps": r["steps"], "layers": len(r["layers"])} for r in summary["rungs"]],
                           "summary": summary}

    for c in cheap.values():
        c["ratio_to_floe_wall"] = c["wall_s"] / out["floe"]["wall_s"]
        c["ratio_to_floe_cpu"] = c["cpu_s"] / out["floe"]["cpu_s"]
    out["cheap"] = cheap
    if args.full_from or "halving" in cheap:  # the full probe reuses the halving's full-budget cells
        _compare_with_full_probe(out, cheap, args, data, training, adapter)
    for c in cheap.values():
        del c["summary"], c["ranking"]
    out["load_after"] = os.getloadavg()
    save("cheap_probe", out)
    print(json.dumps(out, indent=2))


def _compare_with_full_probe(out, cheap, args, data, training, adapter) -> None:
    """Each cheap ranking's Spearman and top-8 overlap against the full probe's."""
    from floe.method.agreement import spearman
    from floe.pipeline.policies import probe_ranking

    # The full probe: every layer alone at the full budget, one load.
    t0, c0 = time.perf_counter(), _cpu()
    if args.full_from:
        out["full_probe"] = json.loads(Path(args.full_from).read_text())["full_probe"]
        out["full_probe"]["from"] = args.full_from
        gains, n_layers = out["full_probe"]["gains"], len(out["full_probe"]["gains"])
    else:
        gains, n_layers = _full_probe(out, cheap, args, data, training, adapter, t0, c0)
    full_rank = probe_ranking({"layers": list(range(n_layers)), "gain": gains})
    position = {k: i for i, k in enumerate(full_rank)}
    for c in cheap.values():
        mine = {k: i for i, k in enumerate(c["ranking"])}
        layers = sorted(position)
        c["spearman_vs_full"] = spearman([-mine[k] for k in layers], [-position[k] for k in layers])
        c["top8_overlap"] = len(set(sorted(mine, key=mine.get)[:8]) & set(full_rank[:8]))
        c["top8"] = sorted(sorted(mine, key=mine.get)[:8])
    out["full_top8"] = sorted(full_rank[:8])


def _full_probe(out, cheap, args, data, training, adapter, t0, c0):
    from floe.experiments.cheap_probe import Bench, train_layers
    from floe.models.load import load_model
    from floe.pipeline.data import load_split, tokenize
    from floe.pipeline.train import total_steps, validation_loss
    model, tok = load_model(args.model, "cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    split = load_split(data)
    rows, val = tokenize(tok, split.train, data.max_length), tokenize(tok, split.val, data.max_length)
    base = validation_loss(model, val, tok.pad_token_id)
    full_steps = total_steps(len(rows), training)
    halving = cheap["halving"]["summary"]
    reused = {c["layer"]: c["gain"] for c in halving["cells"] if c["steps"] == full_steps}
    n_layers = halving["n_layers"]
    bench = Bench(model, rows, val, tok.pad_token_id, base)
    gains = [reused[k] if k in reused else base - train_layers(bench, adapter, training, [k], full_steps)
             for k in range(n_layers)]
    out["full_probe"] = {"wall_s_without_reused": time.perf_counter() - t0, "cpu_s": _cpu() - c0,
                         "reused_layers": sorted(reused), "gains": gains, "base_val_loss": base,
                         "train_steps": n_layers * full_steps}
    return gains, n_layers


if __name__ == "__main__":
    main()
