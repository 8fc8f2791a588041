"""What running the LM head only at the label-predicting positions saves (floe.models.head),
in one process: a validation pass (what every probe reading, set-search evaluation and
held-out loss costs) and a training step (forward and backward with HydraLoRA on every
layer), each with the model's own loss (the head over every position) and with
``token_losses``, medians of the same runs interleaved, on the real embedded models.

    nice .venv/bin/python -m bench.bench_head [--models smollm2-135m,gemma3-270m] [--val 16] [--length 64]

Prints JSON and writes bench/results/head.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.common import machine, save


def _timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turns (so drift on a noisy machine hits both)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(model_name: str, data: str, n_val: int, length: int, train_batch: int, repeats: int) -> dict:
    import torch

    from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora
    from floe.models import arch
    from floe.models.head import IGNORE_INDEX, token_losses
    from floe.models.load import load_model
    from floe.pipeline.data import DataConfig, collate, load_split, tokenize

    model, tok = load_model(model_name, "cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    apply_hydralora(model, HydraLoraConfig(layers=list(range(arch.shape_of(model.config).n_layers))))
    split = load_split(DataConfig(data=data, max_samples=train_batch, val_samples=n_val, max_length=length))
    val = [collate(tokenize(tok, split.val, length)[i:i + 8], tok.pad_token_id)
           for i in range(0, n_val, 8)]
    train = collate(tokenize(tok, split.train, length)[:train_batch], tok.pad_token_id)

    @torch.no_grad()
    def pass_full():
        return sum(model(**b).loss.item() * int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in val)

    @torch.no_grad()
    def pass_gathered():
        return sum(token_losses(model, b).sum().item() for b in val)

    def step_full():
        model.zero_grad(set_to_none=True)
        model(**train).loss.backward()

    def step_gathered():
        model.zero_grad(set_to_none=True)
        token_losses(model, train).mean().backward()

    model.eval()  # no dropout: the two losses must agree
    full, gathered = pass_full(), pass_gathered()
    times = _timed({"pass_full": pass_full, "pass_gathered": pass_gathered,
                    "step_full": step_full, "step_gathered": step_gathered}, repeats)
    positions = sum(b["labels"].numel() for b in val)
    labelled = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in val)
    return {"model": model_name, "vocab": model.config.vocab_size, "val_examples": n_val, "max_length": length,
            "labelled_share_of_positions": labelled / positions, "train_batch": train_batch,
            "loss_sum_full": full, "loss_sum_gathered": gathered, "seconds": times,
            "pass_speedup": times["pass_full"] / times["pass_gathered"],
            "step_speedup": times["step_full"] / times["step_gathered"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--data", default="general")
    parser.add_argument("--val", type=int, default=16, help="validation examples (the probe's default: 16)")
    parser.add_argument("--length", type=int, default=64, help="tokens per example (the probe's default: 64)")
    parser.add_argument("--train-batch", type=int, default=8, help="training micro-batch (the training default: 8)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out = {"runs": [measure(m, args.data, args.val, args.length, args.train_batch, args.repeats)
                    for m in args.models.split(",")], **machine()}
    save("head", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
