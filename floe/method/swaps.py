"""A layer's best single swap under a shared slack (used by Algorithm 2, floe.method.refine).

Within one layer the heads and neurons form one pool of U units; a swap (p -> q) masks a
retained p and unmasks a masked q, gains tau_q - tau_p and needs c_q - c_p of the slack.

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
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NO_SWAP_EVER", "PAIR_CAP", "LayerBest", "LayerIndex", "best_at_slack", "index_layer", "layer_best",
           "masked_front", "prefix_max", "retained_front", "step_function", "suffix_min"]

# A layer's full step function is built from all front pairs when there are at most
# this many; beyond it the layer is answered at the current slack only.
PAIR_CAP = 1 << 16


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
