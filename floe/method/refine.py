"""Refinement (Algorithm 2): single swaps inside a layer under the true per-unit costs.

The greedy masks of Algorithm 1 are priced with component-averaged costs. Here every
unit i has its own Taylor cost c_i, and the problem is

    minimise    loss = sum_{i masked} tau_i
    subject to  sum_{i retained} c_i <= C .

Within one layer the heads and neurons form one pool of U = H + N units. A swap (p -> q)
masks a retained unit p and unmasks a masked unit q of the SAME layer (either type):

    gain  = tau_q - tau_p                     (the loss drops by this much)
    valid : total - c_p + c_q <= C  <=>  need = c_q - c_p <= slack,  slack = C - total .

The slack is one number shared by all layers: every swap moves it for every layer. The
loop applies, over all layers, the valid swap of largest gain, until none is left.

A layer's best swap at any slack, without enumerating its pairs, comes from
floe.method.swaps.

Before stopping, every layer is recomputed at the final slack, so the result has no
improving valid swap. Each swap lowers the loss strictly (gain > 0), so the loop cannot
cycle and terminates.

Complexity: O(L U log U) for the static sorts; per swap O(U + A B log(A B)) to rebuild
the swapped layer's step function (fronts of sizes A, B) plus O(L log) lookups, or
O(U + A log U) for each layer answered at one slack. LLaMA2-7B shape (32 x 11040 units)
from the greedy start: well under a second (bench/bench_refine.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from floe.method.search import budget_limit, check_scores
from floe.method.swaps import LayerBest, index_layer, layer_best

__all__ = ["SUM_MARGIN", "RefineResult", "Swap", "check_costs", "check_keep", "drop_to_fit", "fill_to_budget",
           "refine_masks", "retained_cost_of", "swap_until_stable"]

# Refinement works to budget_limit(C) minus this relative margin, so that re-summing the
# retained costs in another order (rounding ~ 1e-15 relative) still passes within_budget.
SUM_MARGIN = 1e-12
@dataclass(frozen=True)
class Swap:
    """One applied swap. Units are indexed in the layer's pool: 0..H-1 are heads,
    H..H+N-1 are neurons (neuron j is pool index H + j)."""

    layer: int
    masked_unit: int  # p, retained before the swap
    unmasked_unit: int  # q, masked before the swap
    gain: float  # tau_q - tau_p > 0
    cost_after: float  # total retained cost after the swap


@dataclass
class RefineResult:
    keep_heads: Tensor  # [L, H] bool, True = retained
    keep_neurons: Tensor  # [L, N] bool
    n_swaps: int
    n_dropped_to_fit: int
    n_filled: int = 0  # units added back by the fill step (0 without it)
    # loss_history[0]: loss after the fit step (the feasible start), then one entry per
    # swap, each the previous minus the swap's gain, so it is non-increasing exactly;
    # with the fill step, one last entry for the loss after it.
    loss_history: list[float] = field(default_factory=list)


def retained_cost_of(cost: Tensor, keep: Tensor) -> float:
    return float(torch.where(keep, cost, 0.0).sum())


def check_costs(name: str, costs: Tensor, like: Tensor) -> None:
    if costs.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(costs.shape)}, expected {tuple(like.shape)}")
    if not bool(torch.isfinite(costs).all()) or bool((costs < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0 (Taylor importances are |g * w|)")


def check_keep(name: str, keep: Tensor, like: Tensor) -> None:
    if keep.shape != like.shape or keep.dtype != torch.bool:
        raise ValueError(
            f"{name} must be a bool tensor of shape {tuple(like.shape)}, "
            f"got {keep.dtype} {tuple(keep.shape)}"
        )


def drop_to_fit(tau: Tensor, cost: Tensor, keep: Tensor, limit: float) -> int:
    """Mask retained units in increasing tau/cost order until the cost fits; in place.

    Units of zero cost are never dropped (dropping them frees nothing). Ties: lower flat
    index (layer-major, heads before neurons). Returns the number of units masked.
    """
    flat_keep, flat_cost = keep.view(-1), cost.view(-1)
    total = float(flat_cost[flat_keep].sum())
    if total <= limit:
        return 0
    # Only units that free something: a running sum in another order than ``total`` can
    # fall short by rounding and would reach into zero-cost units (zero budget).
    kept = (flat_keep & (flat_cost > 0)).nonzero().squeeze(1)
    ratio = tau.view(-1)[kept] / flat_cost[kept]
    order = kept[torch.sort(ratio, stable=True).indices]
    freed = torch.cumsum(flat_cost[order], 0)
    needed = torch.tensor([total - limit], dtype=freed.dtype)
    n_drop = min(int(torch.searchsorted(freed, needed)) + 1, order.numel())
    flat_keep[order[:n_drop]] = False
    # The running sum and a fresh sum may differ by rounding: drop more if still over.
    while float(flat_cost[flat_keep].sum()) > limit and n_drop < order.numel():
        flat_keep[order[n_drop]] = False
        n_drop += 1
    return n_drop


def fill_to_budget(tau: Tensor, cost: Tensor, keep: Tensor, limit: float) -> int:
    """Extension: unmask masked units by decreasing tau/cost (zero cost first, ties to the
    lower flat index), each that still fits the leftover budget; in place. Returns the count."""
    flat_keep, flat_cost, flat_tau = keep.view(-1), cost.view(-1), tau.view(-1)
    masked = (~flat_keep).nonzero().squeeze(1)
    ratio = torch.where(flat_cost[masked] > 0, flat_tau[masked] / flat_cost[masked], math.inf)
    order = masked[torch.sort(-ratio, stable=True).indices].tolist()
    spent = math.fsum(flat_cost[flat_keep].tolist())
    added = 0
    for unit in order:
        c = float(flat_cost[unit])
        if spent + c <= limit:
            flat_keep[unit] = True
            spent += c
            added += 1
    return added


def _check_inputs(tau_heads: Tensor, tau_neurons: Tensor, cost_heads: Tensor, cost_neurons: Tensor,
                  keep_heads: Tensor, keep_neurons: Tensor, budget: float) -> None:
    check_scores("tau_heads", tau_heads)
    check_scores("tau_neurons", tau_neurons)
    if tau_heads.shape[0] != tau_neurons.shape[0]:
        raise ValueError("tau_heads and tau_neurons disagree on the number of layers")
    check_costs("cost_heads", cost_heads, tau_heads)
    check_costs("cost_neurons", cost_neurons, tau_neurons)
    check_keep("keep_heads", keep_heads, tau_heads)
    check_keep("keep_neurons", keep_neurons, tau_neurons)
    if not (math.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be finite and >= 0, got {budget!r}")


def swap_until_stable(tau: Tensor, cost: Tensor, keep: Tensor, limit: float, history: list[float],
                      on_swap: Callable[[Swap], None] | None = None) -> int:
    """Step 2 of Algorithm 2 on pooled [L, U] float64 tensors: apply the best valid swap over
    all layers until none improves; ``keep`` is updated in place, each swap's loss appended
    to ``history``. Returns the number of swaps."""
    layers = [index_layer(tau[k], cost[k]) for k in range(tau.shape[0])]
    layer_cost = [retained_cost_of(cost[k], keep[k]) for k in range(tau.shape[0])]
    best: list[LayerBest | None] = [None] * len(layers)
    recheck_all = True
    n_swaps = 0
    while layers:
        slack = limit - math.fsum(layer_cost)
        for k, layer in enumerate(layers):
            cached = best[k]
            if recheck_all or cached is None or not cached.holds_at(slack):
                best[k] = layer_best(layer, keep[k], slack)
        options = []
        for cached in best:
            assert cached is not None, "every layer's best swap is computed just above"
            options.append(cached.best_at(slack))
        k = max(range(len(layers)), key=lambda i: options[i][0])  # first max: lowest layer
        gain, p, q = options[k]
        if gain <= 0:
            if recheck_all:
                break
            # Confirm at this slack with every layer recomputed: guards the cached
            # intervals against float rounding, so the result has no improving swap.
            recheck_all = True
            continue
        recheck_all = False
        keep[k, p], keep[k, q] = False, True
        layer_cost[k] = retained_cost_of(cost[k], keep[k])  # fresh sum: no drift
        best[k] = None
        n_swaps += 1
        history.append(history[-1] - gain)
        if on_swap is not None:
            on_swap(Swap(k, p, q, gain, math.fsum(layer_cost)))
    return n_swaps


def refine_masks(
    tau_heads: Tensor,
    tau_neurons: Tensor,
    cost_heads: Tensor,
    cost_neurons: Tensor,
    keep_heads: Tensor,
    keep_neurons: Tensor,
    budget: float,
    *,
    on_swap: Callable[[Swap], None] | None = None,
    fill: bool = False,
) -> RefineResult:
    """Algorithm 2: fit the greedy masks to the true costs, then swap within layers.

    1. If sum_{retained} c_i > C, mask retained units in increasing tau_i / c_i order
       until it fits.
    2. Repeatedly apply, over all layers, the swap (p -> q, same layer, any types) of
       largest gain tau_q - tau_p > 0 with total - c_p + c_q <= C. Ties: lowest layer;
       within a layer the least need c_q - c_p, then the cheapest q (then lower pool
       index). Stop when no layer has an improving valid swap.

    Args:
        tau_heads [L, H], tau_neurons [L, N]: Fisher scores, finite, >= 0.
        cost_heads [L, H], cost_neurons [L, N]: per-unit Taylor costs, finite, >= 0.
        keep_heads, keep_neurons: starting retained masks (bool), e.g. from greedy_masks.
        budget: C, finite, >= 0.
        on_swap: called with each applied Swap (for logging or checking invariants).
        fill: after the swaps, unmask masked units by decreasing tau/cost while they fit
            the leftover budget (fill_to_budget; an extension, off by default).

    Returns:
        RefineResult with new masks (inputs are not modified), on the inputs' device.
        Complexity and the exactness argument are in the module docstring.
    """
    _check_inputs(tau_heads, tau_neurons, cost_heads, cost_neurons, keep_heads, keep_neurons, budget)
    budget = float(budget)
    device = keep_heads.device
    n_heads = tau_heads.shape[1]
    # One pool per layer, heads first: [L, U], float64 on the CPU (a sequential loop).
    tau = torch.cat([tau_heads, tau_neurons], 1).detach().to("cpu", torch.float64).contiguous()
    cost = torch.cat([cost_heads, cost_neurons], 1).detach().to("cpu", torch.float64).contiguous()
    keep = torch.cat([keep_heads, keep_neurons], 1).to("cpu").clone().contiguous()
    limit = budget_limit(budget) - SUM_MARGIN * budget

    n_dropped = drop_to_fit(tau, cost, keep, limit)
    history = [float(torch.where(keep, 0.0, tau).sum())]
    n_swaps = swap_until_stable(tau, cost, keep, limit, history, on_swap)
    n_filled = fill_to_budget(tau, cost, keep, limit) if fill else 0
    if n_filled:
        history.append(float(torch.where(keep, 0.0, tau).sum()))
    return RefineResult(
        keep_heads=keep[:, :n_heads].to(device),
        keep_neurons=keep[:, n_heads:].to(device),
        n_swaps=n_swaps,
        n_dropped_to_fit=n_dropped,
        n_filled=n_filled,
        loss_history=history,
    )
