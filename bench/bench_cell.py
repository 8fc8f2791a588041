"""What a compare cell saves by not repeating measurements (b5ff413), in one process: a cell
(train one layer set, then evaluate its held-out loss, as ``floe compare --tasks ''`` does)
measuring everything itself, as before, against a cell that takes the loss before training
from the process's memo (the base model's: a fresh adapter adds exactly 0) and its
evaluation's loss from the training's final validation (no second model load, no second
pass). Rounds alternate the two modes (ABBA), each in a fresh cache; the first cell of a
round primes the memo as a compare's first cell does, and is not timed. Layer sets that two
policies share (one training since b5ff413) are not part of this figure.

    nice .venv/bin/python -m bench.bench_cell [--model smollm2-135m] [--data medical] [--val 64]

Prints JSON and writes bench/results/cell.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

from bench.common import fresh_cache, machine, save

LAYER_SETS = [[0, 1], [4, 5], [8, 9]]  # the first primes the memo; the others are timed


@contextlib.contextmanager
def measuring_everything():
    """The cell as it was: every training measures its loss before, every evaluation loads the
    model and measures the held-out loss again."""
    from floe.eval import evaluate
    from floe.pipeline import sparse
    saved = sparse.loss_before_training, evaluate._training_val_loss
    sparse.loss_before_training = lambda model, val, pad_id, key: sparse.validation_loss(model, val, pad_id)
    evaluate._training_val_loss = lambda *args: None
    try:
        yield
    finally:
        sparse.loss_before_training, evaluate._training_val_loss = saved


def one_round(model: str, data: str, n_val: int, repeat: bool) -> list[float]:
    from floe.adapters.hydralora import HydraLoraConfig
    from floe.eval.evaluate import EvalConfig, run_evaluation
    from floe.pipeline import sparse
    from floe.pipeline.data import DataConfig
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.train import TrainConfig

    fresh_cache("floe-bench-cell-")
    sparse._LOSS_BEFORE.clear()
    # The compare's default budget (32 examples of at most 64 tokens, batch 4, 8 steps).
    setup = Setup(ModelConfig(model=model, device="cpu"),
                  DataConfig(data=data, max_samples=32, val_samples=n_val, max_length=64, seed=1),
                  HydraLoraConfig(), TrainConfig(batch_size=4, lr=1e-3))
    seconds = []
    with measuring_everything() if repeat else contextlib.nullcontext():
        for layers in LAYER_SETS:
            start = time.perf_counter()
            trained = sparse.run_sparse_training(setup, sparse.SparseConfig(layers=layers), show_progress=False)
            run_evaluation(None, EvalConfig(tasks=[]), train_run=trained.id, device="cpu", show_progress=False)
            seconds.append(time.perf_counter() - start)
    return seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="medical")
    parser.add_argument("--val", type=int, default=64, help="held-out examples (the fair compare's: 64)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"measuring everything": [], "reusing": []}
    for repeat in (True, False, False, True):
        times["measuring everything" if repeat else "reusing"] += one_round(args.model, args.data, args.val, repeat)
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    out = {"model": args.model, "data": args.data, "val_examples": args.val, "cell_seconds": times,
           "median_cell_seconds": medians, "speedup": medians["measuring everything"] / medians["reusing"],
           **machine()}
    save("cell", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
