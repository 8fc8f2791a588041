"""Fixture runs for the app tests and the page benchmark: run folders with the files of
docs/artifacts.md, filled with seeded random values (no model is trained)."""
from __future__ import annotations

import json
from pathlib import Path

import artifact_examples as examples
import numpy as np
from safetensors.numpy import save_file

from floe import __version__
from floe.store.runs import run_for

TARGETS = {"gate": ("in", "inter"), "up": ("in", "inter"), "down": ("inter", "in")}


def make_model_folder(folder: Path, n_layers: int = 4, hidden: int = 32, inter: int = 48,
                      vocab: int = 96) -> Path:
    """A model folder with config.json and a weights file of the right size (zeros)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": n_layers, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": vocab}))
    save_file({"embed": np.zeros((vocab, hidden), np.float32),
               "mlp": np.zeros((n_layers, 3, hidden, inter), np.float32)}, str(folder / "model.safetensors"))
    return folder


def _ranking(scores: np.ndarray) -> list[int]:
    return [int(k) for k in np.argsort(-scores, kind="stable")]


def _scores_of(ranking: list[int], n_layers: int) -> np.ndarray:
    """Layer scores whose ranking is ``ranking``: 1 for the first layer, falling by 1/n."""
    scores = np.zeros(n_layers)
    scores[ranking] = 1.0 - np.arange(n_layers) / n_layers
    return scores


def make_warmup_run(root: Path, model: str, n_layers: int = 4, hidden: int = 32, inter: int = 48,
                    r: int = 8, experts: int = 4, ratio: float = 1.0, seed: int = 42, data: str = "general"):
    cfg = {"floe": __version__, "model": {"model": model, "files_sig": "fixture"},
           "data": {"data": data, "ratio": ratio, "max_samples": 128, "val_samples": 32,
                    "max_length": 128, "seed": seed},
           "adapter": {"r": r, "alpha": 32.0, "dropout": 0.05, "experts": experts,
                       "targets": ["gate", "up", "down"], "layers": None},
           "train": {"lr": 2e-4, "epochs": 1, "batch_size": 8, "grad_accum": 1, "warmup_ratio": 0.03,
                     "weight_decay": 0.0, "max_steps": 0, "checkpoint_every": 50, "seed": seed}}
    run = run_for("warmup", cfg, root)
    dims = {"in": hidden, "inter": inter}
    tensors = {}
    for k in range(n_layers):
        for t, (i, o) in TARGETS.items():
            prefix = f"model.layers.{k}.mlp.{t}_proj"
            tensors[f"{prefix}.lora_A"] = np.zeros((r, dims[i]), np.float32)
            tensors[f"{prefix}.lora_B"] = np.zeros((experts, dims[o], r), np.float32)
            tensors[f"{prefix}.lora_router"] = np.zeros((experts, dims[i]), np.float32)
    (run.path / "adapter").mkdir(exist_ok=True)
    save_file(tensors, str(run.file("adapter/adapter_model.safetensors")))
    run.write_json("warmup.json", examples.warmup_json(4))
    run.log(event="start", stage="warmup", total_steps=4, resumed_from=0)
    run.finish(["warmup.json", "adapter/adapter_model.safetensors"])
    return run


def make_score_run(root: Path | None, model: str, n_layers: int = 4, n_heads: int = 4, n_neurons: int = 48,
                   ratio: float = 1.0, seed: int = 42, beta: float = 0.5, data: str = "general",
                   hidden: int = 32, rankings: dict[str, list[int]] | None = None, warmup: dict | None = None):
    """A finished score run (and its warm-up) with random but consistent files, in ``root``
    (None: the cache). ``rankings`` (policy -> layers, most important first; floe,
    floe-no-refine and stored baselines): these instead of random rankings. ``warmup``: the
    key of the warm-up the run claims, e.g. a real model's (helpers.default_warmup_key), so
    that training accepts it for that model; no warm-up run is written then."""
    if warmup is None:
        warm = make_warmup_run(root, model, n_layers, hidden, n_neurons, ratio=ratio, seed=seed, data=data)
        warmup, warmup_id = warm.config, warm.id
    else:
        warmup_id = "warmup-test"
    rng = np.random.default_rng(seed + int(ratio * 100))
    cfg = {"floe": __version__, "warmup": warmup, "warmup_run": warmup_id,
           "score": {"beta": beta, "score_samples": 64, "score_batch_size": 8, "damping": 0.01,
                     "bound": 10.0}}
    if rankings is not None:
        cfg["rankings"] = rankings
    run = run_for("score", cfg, root)
    tau_h, tau_n = rng.gamma(1.0, 1.0, (n_layers, n_heads)), rng.gamma(1.0, 1.0, (n_layers, n_neurons))
    cost_h, cost_n = rng.gamma(2.0, 1.0, (n_layers, n_heads)), rng.gamma(2.0, 1.0, (n_layers, n_neurons))
    greedy_h = (tau_h > np.median(tau_h)).astype(np.float32)
    greedy_n = (tau_n > np.median(tau_n)).astype(np.float32)
    refined_h, refined_n = greedy_h.copy(), greedy_n.copy()
    refined_n[:, :2] = 1 - refined_n[:, :2]  # a few swaps
    tuned_h = refined_h * rng.uniform(0.6, 1.3, refined_h.shape)
    tuned_n = refined_n * rng.uniform(0.6, 1.3, refined_n.shape)
    units = {"tau_heads": tau_h, "tau_neurons": tau_n, "cost_heads": cost_h, "cost_neurons": cost_n,
             "greedy_heads": greedy_h, "greedy_neurons": greedy_n, "refined_heads": refined_h,
             "refined_neurons": refined_n, "tuned_heads": tuned_h, "tuned_neurons": tuned_n}
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in units.items()},
              str(run.file("units.safetensors")))
    head_share = np.clip(tuned_h, 0, 1).mean(1)
    neuron_share = np.clip(tuned_n, 0, 1).mean(1)
    scores = 1 - (0.3 * head_share + 0.7 * neuron_share)
    scores_nr = scores.copy()
    if n_layers > 3:  # refinement swaps the order of a middle pair
        i, j = _ranking(scores)[1:3]
        scores_nr[i], scores_nr[j] = scores[j], scores[i]
    baselines = {"random": [int(x) for x in rng.permutation(n_layers)],
                 "weight_norm": list(range(n_layers))[::-1],
                 "adapter_norm": _ranking(tau_n.sum(1)), "all": list(range(n_layers))}
    if rankings is not None:  # scores falling with each given rank
        scores, scores_nr = (_scores_of(rankings[p], n_layers) for p in ("floe", "floe-no-refine"))
        baselines = {p.replace("-", "_"): r for p, r in rankings.items() if p not in ("floe", "floe-no-refine")}
    lst = lambda a: [float(x) for x in a]  # noqa: E731
    run.write_json("layers.json", {
        "model": model, "data": data, "ratio": ratio, "seed": seed, "beta": beta,
        "n_layers": n_layers, "n_heads": n_heads, "n_neurons": n_neurons,
        "layer_scores": lst(scores), "ranking": _ranking(scores),
        "layer_scores_without_refinement": lst(scores_nr), "ranking_without_refinement": _ranking(scores_nr),
        "components": {"head_share": lst(head_share), "neuron_share": lst(neuron_share),
                       "binary_share": lst(refined_n.mean(1)),
                       "fisher_heads": lst(tau_h.sum(1)), "fisher_neurons": lst(tau_n.sum(1)),
                       "taylor_heads": lst(cost_h.sum(1)), "taylor_neurons": lst(cost_n.sum(1)),
                       "retained_heads": [int(x) for x in refined_h.sum(1)],
                       "retained_neurons": [int(x) for x in refined_n.sum(1)]},
        **examples.layer_extras(n_layers, baselines)})
    run.write_json("timings.json", examples.timings_json())
    for stage in ("taylor", "fisher"):
        run.log(event="stage", stage=stage, message=f"{stage} started")
        run.log(event="progress", stage=stage, done=2, total=2)
    run.finish(["units.safetensors", "layers.json", "timings.json"])
    return run


def make_study_run(root: Path, model: str, ratios=(1.0, 0.7, 0.3), **kw):
    from floe.experiments.study import ranks_of
    runs = {str(r): make_score_run(root, model, ratio=r, **kw) for r in ratios}
    study = run_for("study", {"floe": __version__, "model": {"model": model}, "data": {"data": "general"},
                              "score": {"beta": 0.5}, "ratios": list(ratios)}, root)
    payload = {name: {r: ranks_of(run.read_json("layers.json")[name.replace("ranks", "ranking")])
                      for r, run in runs.items()} for name in ("ranks", "ranks_without_refinement")}
    study.write_json("stability.json", {"ratios": list(ratios),
                                        "score_runs": {r: run.id for r, run in runs.items()}, **payload})
    study.finish(["stability.json"])
    return study, runs


def make_train_run(root: Path, score_run, policy: str = "floe", k: int = 2, steps: int = 6,
                   done: bool = True):
    from floe.app import training
    warm = score_run.config["warmup"]
    chosen = training.chosen_layers(score_run, policy, k)
    cfg = {"floe": __version__, "model": warm["model"], "data": warm["data"],
           "adapter": {**warm["adapter"], "layers": chosen}, "train": warm["train"],
           "selection": {"policy": policy, "k": len(chosen), "score_run": score_run.id}}
    run = run_for("train", cfg, root)
    run.log(event="stage", stage="train", message=f"layers {chosen}")
    run.log(event="start", stage="train", total_steps=steps, resumed_from=0)
    for s in range(1, steps + 1 if done else steps // 2 + 1):
        run.log(event="step", stage="train", step=s, total_steps=steps, loss=3.0 / s, lr=2e-4,
                tokens_per_s=100.0, elapsed=float(s), eta=float(steps - s))
    if done:
        (run.path / "adapter").mkdir(exist_ok=True)
        save_file({"model.layers.0.mlp.up_proj.lora_A": np.ones((2, 2), np.float32)},
                  str(run.file("adapter/adapter_model.safetensors")))
        run.write_json("adapter/adapter_config.json", {"adapter": cfg["adapter"]})
        run.write_json("train.json", examples.train_json(chosen, steps))
        run.finish(["train.json", "adapter/adapter_model.safetensors"])
    return run


def make_eval_run(root: Path, train_run, acc: float = 0.4):
    run = run_for("eval", {"floe": __version__, "model": train_run.config["model"],
                           "adapter": {"train_run": train_run.id},
                           "eval": {"tasks": ["arc-easy"], "limit": 100}}, root)
    run.write_json("eval.json", examples.eval_json(tasks={"arc-easy": examples.task_result(acc)}))
    run.finish(["eval.json"])
    return run


def make_search_run(root: Path, score_run, k: int = 2, rs=(4, 8, 2, 12, 6), done: bool = True):
    warm = score_run.config["warmup"]
    cfg = {"floe": __version__, "model": warm["model"], "data": warm["data"],
           "adapter": {**warm["adapter"], "r": 0}, "train": warm["train"],
           "selection": {"policy": "floe", "k": k, "score_run": score_run.id},
           "search": {"r_min": 2, "r_max": 16, "sampler_seed": 42}}
    run = run_for("ranksearch", cfg, root)
    trials = [{"number": i, "state": "PRUNED" if i == 3 else "COMPLETE", "r": r,
               "value": None if i == 3 else 2.0 + abs(r - 6) * 0.05, "trainable_parameters": 100 * r,
               "train_seconds": 10.0, "train_run": f"train-{i:012d}"} for i, r in enumerate(rs)]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = min(complete, key=lambda t: t["value"])
    run.write_json("search.json", {"study_name": run.id, "storage": "sqlite:///study.db",
                                   "best_r": best["r"], "best_value": best["value"],
                                   "best_trial": best["number"], "n_complete": len(complete),
                                   "n_finished": len(trials), "trials": trials, "n_trials": len(trials)})
    run.log(event="start", stage="search", total_steps=len(trials), resumed_from=0)
    if done:
        run.finish(["search.json"])
    return run


def make_compare_run(root: Path, score_run, ks=(3, 2), policies=("floe", "floe-no-refine")):
    """A finished ``floe compare`` of two rankings at a few k (the shape of compare.json)."""
    run = run_for("compare", {"floe": __version__, "score_run": score_run.id,
                              "compare": {"ks": list(ks), "policies": list(policies)}}, root)
    cells = [{"k": k, "policy": p, "metric": m, "n": 3, "mean": base + 0.01 * i + 0.005 * (k - 2),
              "std": 0.01, "half_width": 0.01, "ci_low": 0.0, "ci_high": 1.0, "values": [base] * 3}
             for k in ks for i, p in enumerate(policies)
             for m, base in (("arc-easy/acc", 0.45), ("val_loss", 2.0))]
    diffs = [{**c, "mean": c["mean"] - next(r["mean"] for r in cells if (r["k"], r["policy"], r["metric"]) ==
                                             (c["k"], policies[0], c["metric"]))}
             for c in cells if c["policy"] != policies[0]]
    run.write_json("compare.json", examples.compare_json(
        score_run.id, cells, differences={"reference": policies[0], "cells": diffs, "tables": {}}))
    run.file("compare.csv").write_text("k,policy\n")
    run.finish(["compare.json", "compare.csv"])
    return run


SHAPE_7B = dict(n_layers=32, n_heads=32, n_neurons=11008, hidden=4096)


def build_cache_7b_shape(root: Path) -> dict:
    """Every kind of run, 32 layers shaped like LLaMA-2-7B: five score runs (three of them a
    100/70/30 % study), a training run with an evaluation, a rank search and a comparison."""
    model = str(make_model_folder(root / "llama-7b-shape", n_layers=32, hidden=64, inter=128))
    make_study_run(root, model, **SHAPE_7B)
    make_score_run(root, model, seed=1, **SHAPE_7B)
    score = make_score_run(root, model, seed=2, **SHAPE_7B)  # the newest: pages pick it first
    train = make_train_run(root, score, "floe", 8, steps=200)
    make_eval_run(root, train)
    make_search_run(root, score, k=8, rs=tuple(range(2, 17)))
    make_compare_run(root, score, ks=(8, 12, 16))
    return SHAPE_7B


def add_set_search(probe, **over):
    """The probe run made a joint probe with a set search (``floe probe --schedule joint
    --set-search``): probe.json rewritten with examples.set_search_json over its layers."""
    payload = probe.read_json("probe.json")
    found = examples.set_search_json(len(payload["layers"]), **over)
    probe.write_json("probe.json", {**payload, "schedule": "joint", "set_search": found})
    probe.finish(["probe.json"])
    return probe
