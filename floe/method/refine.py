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

Finding a layer's best swap without enumerating its pairs:

* Fronts. A masked q dominated by a masked q' (c_q' <= c_q, tau_q' >= tau_q) can be
  replaced by q' in any swap, which stays valid and gains as much; likewise a retained p
  by a retained p' with c_p' >= c_p, tau_p' <= tau_p. So the best swap at any slack pairs
  the two Pareto fronts, found in O(U) from static cost orders (a running max / min).
  For random scores each front has about log U units.
* Step function. The best gain of a layer is a non-decreasing step function of the
  slack. When the fronts have at most PAIR_CAP pairs, all of them are sorted by need and
  the running best gain gives the whole function: the layer then answers any slack by
  bisection and is recomputed only after its own swap.
* At one slack. Otherwise (large fronts, e.g. cost and tau strongly correlated) the best
  swap at the current slack s is, for each masked q, the retained p of least tau with
  c_p >= c_q - s: a suffix minimum of retained tau in cost order read at
  searchsorted(c_q - s). That answer stays exact while need <= s < next_need, with
  next_need = min_q c_q - max{c_p : p retained, tau_p < tau_q - gain}, the least slack at
  which a strictly better swap becomes valid (a prefix maximum of retained cost in tau
  order); the layer is recomputed when the slack leaves that interval.

Before stopping, every layer is recomputed at the final slack, so the result has no
improving valid swap. Each swap lowers the loss strictly (gain > 0), so the loop cannot
cycle and terminates.

Complexity: O(L U log U) for the static sorts; per swap O(U + A B log(A B)) to rebuild
the swapped layer's step function (fronts of sizes A, B) plus O(L log) lookups, or
O(U + A log U) for each layer answered at one slack. LLaMA2-7B shape (32 x 11040 units)
from the greedy start: well under a second (bench/bench_refine.py).
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from floe.method.search import budget_limit, check_scores

__all__ = ["NO_SWAP_EVER", "PAIR_CAP", "SUM_MARGIN", "LayerBest", "LayerIndex", "RefineResult",
           "Swap", "best_at_slack", "check_costs", "check_keep", "drop_to_fit", "fill_to_budget",
           "index_layer",
           "layer_best", "masked_front", "prefix_max", "refine_masks", "retained_cost_of",
           "retained_front", "step_function", "suffix_min"]

# Refinement works to budget_limit(C) minus this relative margin, so that re-summing the
# retained costs in another order (rounding ~ 1e-15 relative) still passes within_budget.
SUM_MARGIN = 1e-12
# A layer's full step function is built from all front pairs when there are at most
# this many; beyond it the layer is answered at the current slack only.
PAIR_CAP = 1 << 16


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


@dataclass(frozen=True)
class LayerIndex:
    """One layer's pool with its static sort orders; only the retained mask changes."""

    tau: Tensor  # [U] float64
    cost: Tensor  # [U] float64
    by_cost: Tensor  # pool indices, cost ascending (stable)
    cost_by_cost: Tensor
    tau_by_cost: Tensor
    by_tau: Tensor  # pool indices, tau ascending (stable)
    tau_by_tau: Tensor
    cost_by_tau: Tensor


@dataclass(frozen=True)
class LayerBest:
    """A layer's best swap as a step function of the slack, exact while lo <= s < hi.

    Steps come in non-decreasing need (c_q - c_p) with rising gain; at slack s
    the best valid swap is the last step with need <= s (none if there is no such step).
    """

    needs: list[float]
    gains: list[float]
    swaps: list[tuple[int, int]]  # (p, q) pool indices: p to mask, q to unmask
    lo: float = -math.inf
    hi: float = math.inf

    def holds_at(self, slack: float) -> bool:
        return self.lo <= slack < self.hi

    def best_at(self, slack: float) -> tuple[float, int, int]:
        """(gain, p, q) of the best valid swap at `slack`; gain -inf when there is none."""
        i = bisect.bisect_right(self.needs, slack) - 1
        if i < 0:
            return -math.inf, -1, -1
        p, q = self.swaps[i]
        return self.gains[i], p, q


NO_SWAP_EVER = LayerBest(needs=[], gains=[], swaps=[])


def index_layer(tau: Tensor, cost: Tensor) -> LayerIndex:
    by_cost = torch.sort(cost, stable=True).indices
    by_tau = torch.sort(tau, stable=True).indices
    return LayerIndex(
        tau=tau,
        cost=cost,
        by_cost=by_cost,
        cost_by_cost=cost.index_select(0, by_cost),
        tau_by_cost=tau.index_select(0, by_cost),
        by_tau=by_tau,
        tau_by_tau=tau.index_select(0, by_tau),
        cost_by_tau=cost.index_select(0, by_tau),
    )


def suffix_min(values: Tensor) -> tuple[Tensor, Tensor]:
    """min(values[j:]) and where it is, for every j, plus an (+inf, 0) sentinel at U."""
    flipped = torch.cummin(torch.flip(values, (0,)), dim=0)
    mins = torch.flip(flipped.values, (0,))
    at = values.numel() - 1 - torch.flip(flipped.indices, (0,))
    return torch.cat([mins, mins.new_full((1,), math.inf)]), torch.cat([at, at[:1]])


def prefix_max(values: Tensor) -> Tensor:
    """max(values[:j]) for j = 0..U (-inf for the empty prefix)."""
    return torch.cat([values.new_full((1,), -math.inf), torch.cummax(values, dim=0).values])


def masked_front(kept_by_cost: Tensor, tau_by_cost: Tensor, floor: float) -> Tensor:
    """Cost-order flags of the masked units with tau > floor that no cheaper masked
    unit matches in tau (a running maximum; ties in cost: lower pool index first)."""
    masked_tau = torch.where(kept_by_cost, -math.inf, tau_by_cost)
    running = torch.cummax(masked_tau, dim=0).values
    before = torch.cat([running.new_full((1,), -math.inf), running[:-1]])
    return (~kept_by_cost) & (tau_by_cost > before) & (tau_by_cost > floor)


def retained_front(kept_by_cost: Tensor, tau_by_cost: Tensor, ceiling: float) -> Tensor:
    """Cost-order flags of the retained units with tau < ceiling that no costlier
    retained unit matches in tau (a suffix minimum). Along them tau strictly rises."""
    retained_tau = torch.where(kept_by_cost, tau_by_cost, math.inf)
    least_after = suffix_min(retained_tau)[0][1:]
    return kept_by_cost & (tau_by_cost < least_after) & (tau_by_cost < ceiling)


def layer_best(layer: LayerIndex, keep: Tensor, slack: float) -> LayerBest:
    """The layer's best swap: its whole step function when small, else at `slack`.

    A masked q dominated by a masked q' (c_q' <= c_q, tau_q' >= tau_q) can be replaced
    by q' in any swap, which stays valid and gains as much; likewise a retained p by a
    retained p' with c_p' >= c_p and tau_p' <= tau_p. So the best swap at every slack is
    a pair of the two fronts, whose sizes for random scores are about log U each.
    Both ways below pick, among swaps of equal gain, the one of least need, then the
    cheapest q, so they agree exactly.
    """
    if keep.numel() == 0:
        return NO_SWAP_EVER
    # index_select, not t[idx]: advanced indexing is far slower on small CPU tensors.
    kept_by_cost = keep.index_select(0, layer.by_cost)
    tau_by_cost = layer.tau_by_cost
    least_retained = float(torch.where(kept_by_cost, tau_by_cost, math.inf).min())
    q_front = masked_front(kept_by_cost, tau_by_cost, least_retained)
    if not bool(q_front.any()):  # no improving pair at any slack until the layer changes
        return NO_SWAP_EVER
    top = float(torch.where(q_front, tau_by_cost, -math.inf).max())
    p_front = retained_front(kept_by_cost, tau_by_cost, top)
    masked = layer.by_cost.index_select(0, q_front.nonzero().squeeze(1))
    if masked.numel() * int(p_front.sum()) <= PAIR_CAP:
        retained = layer.by_cost.index_select(0, p_front.nonzero().squeeze(1))
        return step_function(layer, retained, masked)
    return best_at_slack(layer, keep, p_front, masked, slack)


def step_function(layer: LayerIndex, retained: Tensor, masked: Tensor) -> LayerBest:
    """The exact best swap for every slack from all (retained, masked) front pairs.

    Pairs with gain > 0 sorted by need (stable: cheaper q, then cheaper p first); a step
    wherever the running best gain rises. O(A B log(A B)) for fronts of sizes A and B.
    """
    tau_p, cost_p = layer.tau.index_select(0, retained), layer.cost.index_select(0, retained)
    tau_q, cost_q = layer.tau.index_select(0, masked), layer.cost.index_select(0, masked)
    gain = (tau_q[:, None] - tau_p[None, :]).reshape(-1)
    need = (cost_q[:, None] - cost_p[None, :]).reshape(-1)
    pair = (gain > 0).nonzero().squeeze(1)
    pair = pair.index_select(0, torch.sort(need.index_select(0, pair), stable=True).indices)
    running = torch.cummax(gain.index_select(0, pair), dim=0).values
    rises = torch.cat([running.new_ones(1, dtype=torch.bool), running[1:] > running[:-1]])
    step = pair.index_select(0, rises.nonzero().squeeze(1))
    n_retained = retained.numel()
    return LayerBest(
        needs=need.index_select(0, step).tolist(),
        gains=gain.index_select(0, step).tolist(),
        swaps=list(
            zip(
                retained.index_select(0, step % n_retained).tolist(),
                masked.index_select(0, step // n_retained).tolist(),
            )
        ),
    )


def best_at_slack(
    layer: LayerIndex, keep: Tensor, p_front: Tensor, masked: Tensor, slack: float
) -> LayerBest:
    """The best swap at `slack` and the slack interval where it stays the best.

        gain = max_{q} tau_q - min{tau_p : p on the front, c_p >= c_q - slack}
        next_need = min_{q} c_q - max{c_p : p retained, tau_p < tau_q - max(gain, 0)}

    over the masked front q; valid while need <= s < next_need. O(U + A log U).
    """
    inf = math.inf
    tau_q = layer.tau.index_select(0, masked)
    cost_q = layer.cost.index_select(0, masked)

    # Partner of each q: the front p of least tau (= the cheapest, tau rises along the
    # front) with c_p >= c_q - slack: a suffix minimum in cost order.
    min_tau, min_at = suffix_min(torch.where(p_front, layer.tau_by_cost, inf))
    first = torch.searchsorted(layer.cost_by_cost, cost_q - slack, side="left")
    partner = layer.by_cost.index_select(0, min_at.index_select(0, first))
    gains = tau_q - min_tau.index_select(0, first)
    needs = cost_q - layer.cost.index_select(0, partner)
    gain = float(gains.max())
    # Largest gain, then least need, then the first (cheapest) q.
    j = int(torch.argmin(torch.where(gains == gain, needs, inf)))

    # Least slack at which some pair with tau_q - tau_p > max(gain, 0) becomes valid.
    retained_cost = torch.where(keep.index_select(0, layer.by_tau), layer.cost_by_tau, -inf)
    below = torch.searchsorted(layer.tau_by_tau, tau_q - max(gain, 0.0), side="left")
    next_need = float((cost_q - prefix_max(retained_cost).index_select(0, below)).min())
    if gain <= 0:
        return LayerBest(needs=[], gains=[], swaps=[], hi=next_need)
    need = float(needs[j])
    swap = (int(partner[j]), int(masked[j]))
    return LayerBest(needs=[need], gains=[gain], swaps=[swap], lo=need, hi=next_need)


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
        options = [cached.best_at(slack) for cached in best]
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
