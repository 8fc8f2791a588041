"""Determination (Algorithm 1): greedy mask search under a global budget.

With the component-averaged costs of METHOD section 3 every head costs ``t_head`` and
every neuron ``t_neuron``. The budget is

    C = beta * (H_total * t_head + N_total * t_neuron),

and the loss of a mask is the Fisher mass it throws away,

    loss(m) = sum_{i : m_i = 0} tau_i .

For a fixed number n of retained heads the optimum is exact: keep the n heads with the
largest tau and then as many neurons as the remaining budget pays for, again the largest
tau first (tau >= 0, so retaining more never hurts). Scanning every feasible n with sorted
prefix sums gives the global optimum in O(U log U) for U units, with no loop over n.

Heads and neurons are ranked across all layers at once, so layers compete for the budget.
Masks are returned as RETAINED masks: True means m = 1.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["BUDGET_RTOL", "as_real", "budget_limit", "budget_of", "check_beta", "check_scores",
           "check_unit_cost", "dropped_mass", "greedy_masks", "masked_loss", "neurons_affordable",
           "order_descending", "within_budget"]

# Budget comparisons use a relative tolerance so that float rounding in
# C = beta * (...) never drops a unit when beta = 1 (e.g. (C - n*t_h) / t_f = 10.999...).
BUDGET_RTOL = 1e-9


def budget_limit(budget: float) -> float:
    """The largest cost accepted as within ``budget``: C + BUDGET_RTOL * |C|."""
    return budget + BUDGET_RTOL * abs(budget)


def within_budget(cost: float, budget: float) -> bool:
    """Whether a retained cost respects ``budget`` (up to the float tolerance)."""
    return cost <= budget_limit(budget)


def as_real(name: str, value: object) -> float:
    """A plain float from a real number or a one-element tensor (e.g. a mean)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def check_beta(beta: object) -> float:
    value = as_real("beta", beta)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(
            f"beta must be a number in (0, 1] (the share of the model's total cost to "
            f"retain), got {beta!r}"
        )
    return value


def check_unit_cost(name: str, cost: object) -> float:
    value = as_real(name, cost)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {cost!r}")
    return value


def check_scores(name: str, scores: Tensor) -> None:
    """Fisher scores are sums of squares: finite and non-negative."""
    if scores.dim() != 2:
        raise ValueError(f"{name} must be 2-D [layers, units], got shape {tuple(scores.shape)}")
    if scores.is_complex() or not scores.is_floating_point():
        raise ValueError(f"{name} must be a real floating-point tensor, got {scores.dtype}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    if bool((scores < 0).any()):
        raise ValueError(
            f"{name} contains negative values (min {scores.min().item():.3g}); Fisher scores "
            "are sums of squared gradients and cannot be negative"
        )


def budget_of(
    beta: float,
    n_heads_total: int,
    n_neurons_total: int,
    t_head: float,
    t_neuron: float,
) -> float:
    """C = beta * (n_heads_total * t_head + n_neurons_total * t_neuron)."""
    beta = check_beta(beta)
    t_head = check_unit_cost("t_head", t_head)
    t_neuron = check_unit_cost("t_neuron", t_neuron)
    if n_heads_total < 0 or n_neurons_total < 0:
        raise ValueError("unit counts must be >= 0")
    return beta * (n_heads_total * t_head + n_neurons_total * t_neuron)


def masked_loss(tau_h: Tensor, tau_n: Tensor, keep_h: Tensor, keep_n: Tensor) -> float:
    """loss = sum of tau over the MASKED units (keep == False), in float64."""
    if tau_h.shape != keep_h.shape or tau_n.shape != keep_n.shape:
        raise ValueError(
            f"score/mask shapes differ: heads {tuple(tau_h.shape)} vs {tuple(keep_h.shape)}, "
            f"neurons {tuple(tau_n.shape)} vs {tuple(keep_n.shape)}"
        )
    lost_h = tau_h.double()[~keep_h.bool()].sum()
    lost_n = tau_n.double()[~keep_n.bool()].sum()
    return float(lost_h + lost_n)


def order_descending(scores: Tensor) -> Tensor:
    """Indices of a 1-D tensor by value, largest first; ties lower index first."""
    # A stable ascending sort of -scores keeps equal values in index order.
    return torch.sort(-scores, stable=True).indices


def dropped_mass(sorted_desc: Tensor) -> Tensor:
    """dropped[n] = sum of sorted_desc[n:], the loss of retaining only the first n.

    Computed as a reversed cumulative sum so that dropped[len] is exactly 0.
    """
    tail = torch.flip(torch.cumsum(torch.flip(sorted_desc, (0,)), 0), (0,))
    return torch.cat([tail, tail.new_zeros(1)])


def neurons_affordable(
    n_heads: Tensor, t_head: float, t_neuron: float, budget: float, n_neurons_total: int
) -> Tensor:
    """f(n) = min(floor((C - n * t_head) / t_neuron), N_total), never above the budget.

    The floor can land one too high through rounding; a single correction step
    enforces n * t_head + f * t_neuron <= limit exactly as ``within_budget`` checks it.
    """
    limit = budget_limit(budget)
    head_cost = n_heads.double() * t_head
    f = torch.floor((limit - head_cost) / t_neuron).clamp(min=0, max=n_neurons_total)
    over = head_cost + f * t_neuron > limit
    return (f - over.double()).clamp(min=0).long()


def greedy_masks(
    tau_heads: Tensor,
    tau_neurons: Tensor,
    t_head: float,
    t_neuron: float,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """Algorithm 1: the exact optimum of the averaged-cost problem.

    minimise    sum_{masked} tau
    subject to  n * t_head + f * t_neuron <= C,
                C = beta * (L*H * t_head + L*N * t_neuron)

    For each feasible n (heads retained, 0..L*H with n * t_head <= C) retain the top-n
    heads and the top-f(n) neurons, f(n) = min(floor((C - n t_head) / t_neuron), L*N),
    and keep the n of smallest loss. Ties in loss go to the LARGEST n (more of the budget
    on heads; it also makes beta = 1 retain every unit even when some tau are 0). Ties in
    tau go to the lower flat index (layer-major), through a stable sort.

    Args:
        tau_heads: Fisher scores of heads, [L, H], finite and >= 0.
        tau_neurons: Fisher scores of neurons, [L, N], finite and >= 0.
        t_head, t_neuron: averaged Taylor cost of one head / one neuron, > 0.
        beta: share of the total cost to retain, in (0, 1].

    Returns:
        (keep_heads [L, H], keep_neurons [L, N]) boolean, True = retained (m = 1).
    """
    beta = check_beta(beta)
    t_head = check_unit_cost("t_head", t_head)
    t_neuron = check_unit_cost("t_neuron", t_neuron)
    check_scores("tau_heads", tau_heads)
    check_scores("tau_neurons", tau_neurons)
    if tau_heads.shape[0] != tau_neurons.shape[0]:
        raise ValueError(
            f"tau_heads and tau_neurons disagree on the number of layers: "
            f"{tau_heads.shape[0]} vs {tau_neurons.shape[0]}"
        )

    flat_h = tau_heads.detach().reshape(-1).double()
    flat_n = tau_neurons.detach().reshape(-1).double()
    n_h_total, n_n_total = flat_h.numel(), flat_n.numel()
    budget = budget_of(beta, n_h_total, n_n_total, t_head, t_neuron)

    order_h = order_descending(flat_h)
    order_n = order_descending(flat_n)
    lost_h = dropped_mass(flat_h[order_h])  # [H_total + 1]
    lost_n = dropped_mass(flat_n[order_n])  # [N_total + 1]

    n = torch.arange(n_h_total + 1, device=flat_h.device)
    feasible = n.double() * t_head <= budget_limit(budget)  # n = 0 is always feasible
    f = neurons_affordable(n, t_head, t_neuron, budget, n_n_total)
    loss = torch.where(feasible, lost_h + lost_n[f], torch.full_like(lost_h, math.inf))

    # Largest n among the minimisers: argmin over the reversed vector returns the first.
    best_n = n_h_total - int(torch.argmin(torch.flip(loss, (0,))))
    best_f = int(f[best_n])

    keep_h = torch.zeros(n_h_total, dtype=torch.bool, device=flat_h.device)
    keep_n = torch.zeros(n_n_total, dtype=torch.bool, device=flat_n.device)
    keep_h[order_h[:best_n]] = True
    keep_n[order_n[:best_f]] = True
    return keep_h.reshape(tau_heads.shape), keep_n.reshape(tau_neurons.shape)
