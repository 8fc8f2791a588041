"""Time refine_masks (Algorithm 2) on a LLaMA2-7B-shaped random instance.

32 layers x (32 heads + 11008 neurons). Scores and per-unit costs are random; the start
is the greedy solution of Algorithm 1 priced with the averaged costs, as in the pipeline.
Prints timings only. Usage: .venv/bin/python bench/bench_refine.py [--threads N]
"""
from __future__ import annotations

import argparse
import time

import torch

from floe.method.refine import refine_masks
from floe.method.search import budget_of, greedy_masks

L, H, N = 32, 32, 11008
HEAD_TO_NEURON = 170.0  # ~ (4 * 4096 * 128) / (3 * 4096) weights per head vs per neuron


def random_instance(cost_model: str, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    def lognormal(*shape: int, sigma: float) -> torch.Tensor:
        return torch.exp(sigma * torch.randn(*shape, generator=g, dtype=torch.float64))

    tau_h = uniform(L, H) ** 2
    tau_n = uniform(L, N) ** 2 * 0.05
    if cost_model == "independent":
        cost_h = HEAD_TO_NEURON * lognormal(L, H, sigma=0.5)
        cost_n = lognormal(L, N, sigma=0.5)
    elif cost_model == "uniform":
        cost_h = HEAD_TO_NEURON * uniform(L, H)
        cost_n = uniform(L, N)
    elif cost_model == "correlated":  # important units also cost more: the fit step drops
        cost_h = HEAD_TO_NEURON * (tau_h / tau_h.mean()).sqrt() * lognormal(L, H, sigma=0.3)
        cost_n = (tau_n / tau_n.mean()).sqrt() * lognormal(L, N, sigma=0.3)
    else:
        raise ValueError(cost_model)
    return tau_h, tau_n, cost_h, cost_n


def bench(cost_model: str, seed: int, beta: float) -> None:
    tau_h, tau_n, cost_h, cost_n = random_instance(cost_model, seed)
    t_head, t_neuron = float(cost_h.mean()), float(cost_n.mean())
    start = time.perf_counter()
    keep_h, keep_n = greedy_masks(tau_h, tau_n, t_head, t_neuron, beta)
    greedy_s = time.perf_counter() - start
    budget = budget_of(beta, L * H, L * N, t_head, t_neuron)
    start = time.perf_counter()
    result = refine_masks(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
    refine_s = time.perf_counter() - start
    print(
        f"{cost_model:>11} seed={seed} beta={beta}: greedy {greedy_s:.2f} s, refine {refine_s:.2f} s "
        f"({result.n_dropped_to_fit} dropped to fit, {result.n_swaps} swaps, "
        f"loss {result.loss_history[0]:.4f} -> {result.loss_history[-1]:.4f})",
        flush=True,
    )


def bench_random_start(seed: int) -> None:
    """Worst case: a random half of the units retained, no slack; tens of thousands of
    swaps, each moving the shared slack."""
    tau_h, tau_n, cost_h, cost_n = random_instance("uniform", seed)
    g = torch.Generator().manual_seed(seed + 1)
    keep_h = torch.rand(L, H, generator=g) < 0.5
    keep_n = torch.rand(L, N, generator=g) < 0.5
    budget = float(cost_h[keep_h].sum() + cost_n[keep_n].sum())
    start = time.perf_counter()
    result = refine_masks(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
    refine_s = time.perf_counter() - start
    print(
        f"random start seed={seed}: refine {refine_s:.2f} s ({result.n_swaps} swaps, "
        f"{1e3 * refine_s / max(result.n_swaps, 1):.2f} ms per swap, "
        f"loss {result.loss_history[0]:.2f} -> {result.loss_history[-1]:.2f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--random-start", action="store_true", help="also time the worst case (minutes)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"shape L={L} H={H} N={N}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for cost_model in ("independent", "uniform", "correlated"):
        for beta in (0.3, 0.5, 0.7):
            bench(cost_model, seed=0, beta=beta)
    if args.random_start:
        bench_random_start(seed=0)


if __name__ == "__main__":
    main()
