"""What replaying a parent's lower decoder blocks saves the set search (issue 20), in one run.

The set search reads each set's validation loss with only its adapters on; a set differs
from its parent (the set it grows or shrinks by one layer) from block j on, so
floe.experiments.switched replays blocks 0..j-1 from the parent's recorded pass. This times
one validation pass on the real model with HydraLoRA on every layer, computed in full and
replayed from block j for several j (medians, the same process), then replays the exact
sequence of (set, parent) evaluations of a whole set search (forward selection to L,
backward elimination, four curves; floe.method.setsearch on a synthetic loss: which blocks
a search skips does not depend on the losses, only on the sets' sizes and members) to give
the search's cost with replay as a share of its cost without, recording passes included, and
the same for the joint probe's L single-layer readings (each replayed from the empty set's pass).

    nice .venv/bin/python -m bench.bench_replay [--model smollm2-135m] [--val 16] [--length 64]

Prints JSON and writes bench/results/replay.json.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from bench.common import machine, save


def _search_starts(n_layers: int, seed: int = 0) -> tuple[list[int], int]:
    """The first differing block of every evaluation a full search makes (0: a full pass),
    and its number of parent recordings: the pure searches on a random additive loss."""
    from floe.experiments.switched import first_difference
    from floe.method.setsearch import MemoLoss, backward_elimination, curve_of_ranking, forward_selection
    rng = random.Random(seed)
    gain = [rng.random() for _ in range(n_layers)]
    starts: list[int] = []
    parents: list[frozenset[int]] = []

    def loss(layers, parent):
        start = first_difference(layers, parent)
        starts.append(start)
        if start > 0 and (not parents or parents[-1] != parent):
            parents.append(parent)
        return -sum(gain[k] for k in layers) + 0.01 * len(layers) ** 2

    memo = MemoLoss(loss, {frozenset({k}): -gain[k] for k in range(n_layers)}, with_parent=True)
    layers = list(range(n_layers))
    forward = forward_selection(layers, memo)
    backward = backward_elimination(layers, memo)
    for ranking in (forward["order"], backward["order"], layers[::-1], sorted(layers, key=lambda k: -gain[k])):
        curve_of_ranking(ranking, memo, range(1, n_layers + 1))
    return starts, len(parents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="general")
    parser.add_argument("--val", type=int, default=16, help="validation examples (the probe's default: 16)")
    parser.add_argument("--length", type=int, default=64, help="tokens per example (the probe's default: 64)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora
    from floe.experiments.switched import SwitchedLoss
    from floe.models import arch
    from floe.models.load import load_model
    from floe.pipeline.data import DataConfig, load_split, tokenize

    model, tok = load_model(args.model, "cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    n_layers = arch.shape_of(model.config).n_layers
    torch.manual_seed(0)
    apply_hydralora(model, HydraLoraConfig(layers=list(range(n_layers))))
    split = load_split(DataConfig(data=args.data, max_samples=8, val_samples=args.val, max_length=args.length))
    val = tokenize(tok, split.val, args.length)
    everything = frozenset(range(n_layers))
    switched = SwitchedLoss(model, val, tok.pad_token_id)
    switched(everything - {n_layers - 1}, everything, key=0)  # records the parent once, untimed

    def seconds(start: int) -> float:
        layers = everything - {start} if start else everything
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            switched(layers, everything if start else None, key=0)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    probes = sorted({0, *range(max(1, n_layers // 6), n_layers, max(1, n_layers // 6)), n_layers - 1})
    by_start = {j: seconds(j) for j in probes}
    full = by_start[0]

    def at(j: int) -> float:  # linear between the measured starts
        lo = max(k for k in probes if k <= j)
        hi = min((k for k in probes if k >= j), default=lo)
        return by_start[lo] if hi == lo else by_start[lo] + (by_start[hi] - by_start[lo]) * (j - lo) / (hi - lo)

    starts, recordings = _search_starts(n_layers)
    with_replay = sum(at(j) for j in starts) + recordings * full
    # The joint probe's own readings: each single replayed from one recorded pass of the empty set.
    singles_with_replay = sum(at(j) for j in range(n_layers)) + full
    out = {"model": args.model, "n_layers": n_layers, "val_examples": len(val), "max_length": args.length,
           "seconds_per_pass_by_start": by_start,
           "share_of_a_full_pass": {j: t / full for j, t in by_start.items()},
           "search_evaluations": len(starts), "search_recordings": recordings,
           "search_seconds_without_replay": len(starts) * full, "search_seconds_with_replay": with_replay,
           "search_speedup": len(starts) * full / with_replay,
           "singles_seconds_without_replay": n_layers * full, "singles_seconds_with_replay": singles_with_replay,
           "singles_speedup": n_layers * full / singles_with_replay, **machine()}
    save("replay", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
