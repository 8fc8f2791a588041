"""Complete example payloads of each artifact (floe.store.artifacts), for the tests' fake runs:
a fake run holds files of the real shape, so the app and the readers are tested on what the
writers produce. Each takes overrides of its fields."""
from __future__ import annotations


def train_summary(steps: int = 4, **over) -> dict:
    return {"steps": steps, "total_steps": steps, "losses": [3.0 / s for s in range(1, steps + 1)],
            "resumed_from": 0, "seconds": 10.0, "world_size": 1, **over}


def warmup_json(steps: int = 4, **over) -> dict:
    return {**train_summary(steps), "val_loss_before": 3.1, "val_loss_after": 2.4, "n_train": 32, "n_val": 16,
            "trainable_parameters": 12345, "device": "cpu", **over}


def train_json(layers: list[int], steps: int = 6, **over) -> dict:
    return {**train_summary(steps), "layers": layers, "r": 8, "val_loss_before": 3.1, "val_loss_after": 2.4,
            "n_train": 32, "n_val": 16, "trainable_parameters": 1234, "peak_memory_bytes": 2 ** 30,
            "peak_memory_source": "rss", "device": "cpu", **over}


def timings_json(**over) -> dict:
    return {"taylor": 1.0, "fisher": 1.0, "search": 0.1, "refine": 0.1, "tune": 0.5, "baselines": 0.3,
            "total": 3.0, "device": "cpu", "torch": "2.13.0", "transformers": "5.23.0", "python": "3.11.7",
            "host": "test", "threads": 2, **over}


def refinement(**over) -> dict:
    return {"swaps": 2, "dropped_to_fit": 0, "fill": False, "filled": 0, "greedy_loss": 1.0,
            "greedy_cost_ratio": 1.0, "fit_loss": 1.0, "refined_loss": 0.9, "refined_cost_ratio": 0.98, **over}


def layer_extras(n_layers: int, baselines: dict) -> dict:
    """The fields of layers.json a fake score run leaves out of its scores: the baselines'
    rankings (the required ones not given: by depth; lora_drop and ht_sr only when given,
    as in a score run of 0.2.0), their signals, refinement and tuning summaries."""
    depth = list(range(n_layers))[::-1]
    full = {name: baselines.get(name, depth) for name in ("random", "weight_norm", "adapter_norm")}
    full.update({"all": list(range(n_layers)), **baselines})
    signal = [float(n_layers - k) for k in range(n_layers)]
    return {"baselines": full, "signals": {name: signal for name in full if name not in ("random", "all")},
            "refinement": refinement(), "tuning": {"fallbacks": 0, "error_binary": 0.2, "error_tuned": 0.1},
            "n_scoring_samples": 32}


def eval_json(val_loss: float = 2.4, tasks: dict | None = None, **over) -> dict:
    return {"val_loss": val_loss, "perplexity": 11.0, "tasks": tasks or {}, "scorer": "lm-eval 0.4.13",
            "model": "test", "adapter": None, "device": "cpu", **over}


def task_result(acc: float, n: int = 100) -> dict:
    return {"acc": acc, "acc_stderr": 0.05, "acc_norm": acc + 0.01, "acc_norm_stderr": 0.05, "n": n,
            "correct": [1] * int(acc * n) + [0] * (n - int(acc * n)), "loglikelihoods": [[-1.0, -2.0]] * n}


def probe_json(layers: list[int], gains: dict[int, list[float]], base: float = 3.0, **over) -> dict:
    """A finished cell probe of ``layers`` with ``gains[seed][i]`` for layer ``layers[i]``."""
    from floe.method.stats import mean_ci
    cells = [{"layer": k, "seed": seed, "train_run": f"train-{seed:06d}{k:06d}", "adapted": [k],
              "val_loss_before": base, "val_loss_after": base - g, "gain": g, "train_seconds": 5.0}
             for seed, row in gains.items() for k, g in zip(layers, row)]
    cis = [mean_ci([row[i] for row in gains.values()]) for i in range(len(layers))]
    return {"model": "test", "data": "general", "mode": "single", "n_layers": len(layers), "layers": layers,
            "seeds": list(gains), "partial": False, "config": {}, "cells": cells,
            "gain": [c["mean"] for c in cis], "gain_ci": cis, "base_val_loss": base, "cell_seconds": 5.0,
            "storage": None, **over}


def compare_json(score_run: str, cells: list[dict], **over) -> dict:
    return {"score_run": score_run, "model": "test", "n_layers": 4, "partial": False, "config": {},
            "metrics": sorted({c["metric"] for c in cells}), "cells": cells, "results": [],
            "base": {"eval_run": "eval-000000000000", "metrics": {}}, "tables": {}, **over}


def set_search_json(n_layers: int = 8, base: float = 3.0, all_gain: float = 0.1, **over) -> dict:
    """probe.json's ``set_search`` (floe.store.set_search) over ``n_layers`` layers: forward
    selection does better, its predicted gain reaching 95 % of the all-layer gain at
    k = n_layers // 2 (the suggested k at the default 90 %); backward elimination, the
    probe's singles and the deepest layers buy 90, 80 and 60 % of it at each k below L."""
    from floe.experiments.cheap_probe import suggestion
    half = max(1, n_layers // 2)
    ks = list(range(1, n_layers + 1))
    shares = [0.95 * k / half if k <= half else 0.95 + 0.05 * (k - half) / max(1, n_layers - half) for k in ks]
    all_loss = base - all_gain

    def curve(scale: float) -> list[float]:
        return [base - scale * s * all_gain for s in shares[:-1]] + [all_loss]
    forward = [(5 * i + 3) % n_layers for i in range(n_layers)]
    rankings = {"probe": list(range(n_layers))[::-1][1:] + [n_layers - 1], "forward": forward,
                "backward": forward[::-1], "deepest": list(range(n_layers))[::-1]}
    curves = {"probe": curve(0.8), "forward": curve(1.0), "backward": curve(0.9), "deepest": curve(0.6)}
    found = {"forward": {"order": forward, "ks": ks, "losses": curves["forward"]},
             "backward": {"order": rankings["backward"], "ks": ks, "losses": curves["backward"]},
             "better": "forward", "mean_loss": {name: sum(curves[name]) / n_layers for name in ("forward", "backward")},
             "ranking": forward, "ks": ks, "rankings": rankings, "curves": curves, "base_loss": base,
             "all_loss": all_loss, "score_run": None, "search_max_k": n_layers,
             "sets_evaluated": n_layers * n_layers // 2, "validation_passes": n_layers * n_layers // 2, "n_seeds": 1,
             "train_seconds": 4.5, "search_seconds": 38.3, "curve_seconds": 3.2, **over}
    found.setdefault("suggested", suggestion(found, 0.9))
    return found
