from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from floe.method.search import budget_limit, budget_of, greedy_masks, masked_loss, within_budget


@functools.cache
def all_masks(n_units: int) -> torch.Tensor:
    """Every boolean mask over n_units units, [2**n_units, n_units]."""
    return torch.tensor(list(itertools.product([False, True], repeat=n_units)))


def brute_force_loss(tau_h, tau_n, t_head, t_neuron, beta) -> float:
    """The optimum of the averaged-cost problem by enumerating every subset."""
    L, H = tau_h.shape
    N = tau_n.shape[1]
    budget = budget_of(beta, L * H, L * N, t_head, t_neuron)
    masks = all_masks(L * H + L * N)
    n_h, n_n = masks[:, : L * H].sum(1), masks[:, L * H :].sum(1)
    tau = torch.cat([tau_h.reshape(-1), tau_n.reshape(-1)]).double()
    losses = (~masks).double() @ tau
    # Same float64 arithmetic and tolerance as within_budget, for all subsets at once.
    fits = n_h.double() * t_head + n_n.double() * t_neuron <= budget_limit(budget)
    return float(losses[fits].min())


def retained_cost(keep_h, keep_n, t_head, t_neuron) -> float:
    return int(keep_h.sum()) * t_head + int(keep_n.sum()) * t_neuron


def random_instance(seed: int, L=2, H=2, N=3, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # small integers: many equal scores and zeros
        tau_h = torch.randint(0, 3, (L, H), generator=g).double()
        tau_n = torch.randint(0, 3, (L, N), generator=g).double()
    else:
        tau_h = torch.rand(L, H, generator=g, dtype=torch.float64) * 3
        tau_n = torch.rand(L, N, generator=g, dtype=torch.float64)
    t_head = float(torch.rand(1, generator=g)) * 5 + 0.1
    t_neuron = float(torch.rand(1, generator=g)) * 2 + 0.1
    return tau_h, tau_n, t_head, t_neuron


BETAS = [0.05, 0.2, 0.37, 0.5, 0.8, 0.99, 1.0]


@pytest.mark.parametrize("ties", [False, True])
def test_matches_brute_force_optimum(ties):
    for seed in range(25):
        tau_h, tau_n, t_head, t_neuron = random_instance(seed, ties=ties)
        for beta in BETAS:
            keep_h, keep_n = greedy_masks(tau_h, tau_n, t_head, t_neuron, beta)
            expected = brute_force_loss(tau_h, tau_n, t_head, t_neuron, beta)
            got = masked_loss(tau_h, tau_n, keep_h, keep_n)
            assert got == pytest.approx(expected, abs=1e-12), (seed, beta)


def test_matches_brute_force_when_heads_are_cheap():
    # Heads cheaper than neurons: the optimum may retain all heads and few neurons.
    for seed in range(15):
        tau_h, tau_n, _, _ = random_instance(100 + seed, L=3, H=2, N=2)
        for beta in BETAS:
            keep_h, keep_n = greedy_masks(tau_h, tau_n, 0.3, 1.7, beta)
            expected = brute_force_loss(tau_h, tau_n, 0.3, 1.7, beta)
            assert masked_loss(tau_h, tau_n, keep_h, keep_n) == pytest.approx(expected, abs=1e-12)


def test_budget_respected_and_shapes():
    for seed in range(20):
        tau_h, tau_n, t_head, t_neuron = random_instance(seed, L=4, H=8, N=40)
        for beta in BETAS:
            keep_h, keep_n = greedy_masks(tau_h, tau_n, t_head, t_neuron, beta)
            assert keep_h.shape == tau_h.shape and keep_h.dtype == torch.bool
            assert keep_n.shape == tau_n.shape and keep_n.dtype == torch.bool
            budget = budget_of(beta, tau_h.numel(), tau_n.numel(), t_head, t_neuron)
            assert within_budget(retained_cost(keep_h, keep_n, t_head, t_neuron), budget)


def test_retains_largest_scores_within_each_type():
    tau_h, tau_n, t_head, t_neuron = random_instance(7, L=4, H=8, N=40)
    keep_h, keep_n = greedy_masks(tau_h, tau_n, t_head, t_neuron, 0.5)
    for tau, keep in [(tau_h, keep_h), (tau_n, keep_n)]:
        if keep.any() and (~keep).any():
            assert tau[keep].min() >= tau[~keep].max()


def test_neurons_fill_the_remaining_budget():
    # Retaining one more neuron must not fit (unless every neuron is retained).
    for seed in range(10):
        tau_h, tau_n, t_head, t_neuron = random_instance(seed, L=3, H=4, N=30)
        for beta in BETAS:
            keep_h, keep_n = greedy_masks(tau_h, tau_n, t_head, t_neuron, beta)
            budget = budget_of(beta, tau_h.numel(), tau_n.numel(), t_head, t_neuron)
            cost = retained_cost(keep_h, keep_n, t_head, t_neuron)
            assert bool(keep_n.all()) or not within_budget(cost + t_neuron, budget)


def test_beta_one_retains_everything_even_with_zero_scores():
    tau_h = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    tau_n = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0]])
    # Costs chosen so that beta * (...) suffers float rounding.
    keep_h, keep_n = greedy_masks(tau_h, tau_n, 0.1, 0.7, 1.0)
    assert keep_h.all() and keep_n.all()
    tau_h, tau_n, t_head, t_neuron = random_instance(3, L=5, H=6, N=33)
    keep_h, keep_n = greedy_masks(tau_h, tau_n, t_head, t_neuron, 1.0)
    assert keep_h.all() and keep_n.all()


def test_hand_computed_example():
    # t_head = 2, t_neuron = 1, 2 heads + 4 neurons: C = 0.5 * (4 + 4) = 4.
    tau_h = torch.tensor([[5.0], [1.0]])
    tau_n = torch.tensor([[3.0, 0.5], [2.0, 0.1]])
    keep_h, keep_n = greedy_masks(tau_h, tau_n, 2.0, 1.0, 0.5)
    # n=0: keep 4 neurons, lose 6.0; n=1: head 5 + neurons 3, 2, lose 1.6;
    # n=2: both heads, lose 5.6. Best: n=1.
    assert keep_h.tolist() == [[True], [False]]
    assert keep_n.tolist() == [[True, False], [True, False]]
    assert masked_loss(tau_h, tau_n, keep_h, keep_n) == pytest.approx(1.6)


def test_tau_ties_break_to_lower_index():
    tau_h = torch.zeros(2, 2)
    tau_n = torch.ones(2, 3)
    # C = 0.5 * (4 * 10 + 6 * 1) = 23: 2 heads (20) + 3 neurons, or 0 heads + 6 neurons.
    keep_h, keep_n = greedy_masks(tau_h, tau_n, 10.0, 1.0, 0.5)
    # Losses: n=0 -> 0, n=1 -> 0 (13 neurons cap 6), n=2 -> 3. Largest minimiser: n=1.
    assert keep_h.tolist() == [[True, False], [False, False]]
    assert keep_n.all()
    tau_n = torch.ones(2, 3)
    keep_h, keep_n = greedy_masks(torch.full((2, 2), 9.0), tau_n, 1.0, 1.0, 0.5)
    # C = 5: all 4 heads + 1 neuron; the tied neurons go by lower flat index.
    assert keep_h.all()
    assert keep_n.tolist() == [[True, False, False], [False, False, False]]


def test_deterministic():
    tau_h, tau_n, t_head, t_neuron = random_instance(11, L=4, H=8, N=40, ties=True)
    a = greedy_masks(tau_h, tau_n, t_head, t_neuron, 0.4)
    b = greedy_masks(tau_h.clone(), tau_n.clone(), t_head, t_neuron, 0.4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_large_shape_is_vectorised():
    # 7B shape: 32 x 32 heads and 32 x 11008 neurons; must be exact on the prefix structure.
    g = torch.Generator().manual_seed(0)
    tau_h = torch.rand(32, 32, generator=g)
    tau_n = torch.rand(32, 11008, generator=g) * 0.05
    t_head, t_neuron = 2.0e3, 45.0
    keep_h, keep_n = greedy_masks(tau_h, tau_n, t_head, t_neuron, 0.5)
    budget = budget_of(0.5, tau_h.numel(), tau_n.numel(), t_head, t_neuron)
    cost = retained_cost(keep_h, keep_n, t_head, t_neuron)
    assert within_budget(cost, budget) and not within_budget(cost + t_neuron, budget)
    loss = masked_loss(tau_h, tau_n, keep_h, keep_n)
    # Neighbouring head counts (one head fewer / more, neurons refilled) are no better.
    flat_h = torch.sort(tau_h.reshape(-1).double(), descending=True).values
    flat_n = torch.sort(tau_n.reshape(-1).double(), descending=True).values
    n = int(keep_h.sum())
    for m in (n - 1, n + 1):
        if 0 <= m <= flat_h.numel() and m * t_head <= budget:
            f = min(int((budget - m * t_head) // t_neuron), flat_n.numel())
            other = float(flat_h[m:].sum() + flat_n[f:].sum())
            assert loss <= other + 1e-6


@pytest.mark.parametrize("beta", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        greedy_masks(torch.ones(2, 2), torch.ones(2, 3), 1.0, 1.0, beta)
    with pytest.raises(ValueError, match="beta"):
        budget_of(beta, 4, 6, 1.0, 1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_bad_scores(bad):
    tau_h = torch.ones(2, 2)
    tau_h[1, 0] = bad
    with pytest.raises(ValueError, match="tau_heads"):
        greedy_masks(tau_h, torch.ones(2, 3), 1.0, 1.0, 0.5)
    tau_n = torch.ones(2, 3)
    tau_n[0, 2] = bad
    with pytest.raises(ValueError, match="tau_neurons"):
        greedy_masks(torch.ones(2, 2), tau_n, 1.0, 1.0, 0.5)


@pytest.mark.parametrize("t_head,t_neuron", [(0.0, 1.0), (1.0, 0.0), (-2.0, 1.0), (1.0, math.nan)])
def test_bad_costs(t_head, t_neuron):
    with pytest.raises(ValueError, match="t_head|t_neuron"):
        greedy_masks(torch.ones(2, 2), torch.ones(2, 3), t_head, t_neuron, 0.5)


def test_accepts_one_element_tensors_for_scalars():
    tau_h, tau_n, t_head, t_neuron = random_instance(2, L=3, H=4, N=10)
    plain = greedy_masks(tau_h, tau_n, t_head, t_neuron, 0.5)
    tensors = greedy_masks(
        tau_h, tau_n, torch.tensor(t_head, dtype=torch.float64), torch.tensor([t_neuron]), torch.tensor(0.5)
    )
    assert torch.equal(plain[0], tensors[0]) and torch.equal(plain[1], tensors[1])
    with pytest.raises(ValueError, match="beta"):
        greedy_masks(tau_h, tau_n, t_head, t_neuron, True)
    with pytest.raises(ValueError, match="t_head"):
        greedy_masks(tau_h, tau_n, "1.0", t_neuron, 0.5)


def test_layer_mismatch():
    with pytest.raises(ValueError, match="layers"):
        greedy_masks(torch.ones(2, 2), torch.ones(3, 3), 1.0, 1.0, 0.5)


def test_masked_loss_counts_masked_units_only():
    tau_h = torch.tensor([[1.0, 2.0]])
    tau_n = torch.tensor([[4.0, 8.0, 16.0]])
    keep_h = torch.tensor([[True, False]])
    keep_n = torch.tensor([[False, True, False]])
    assert masked_loss(tau_h, tau_n, keep_h, keep_n) == 22.0
    with pytest.raises(ValueError):
        masked_loss(tau_h, tau_n, keep_h.T, keep_n)
