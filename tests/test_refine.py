from __future__ import annotations

import math

import pytest
import torch

import floe.method.refine
import floe.method.swaps
from floe.method.refine import RefineResult, Swap, refine_masks
from floe.method.search import budget_limit, budget_of, greedy_masks, masked_loss, within_budget


@pytest.fixture(params=["step_function", "best_at_slack"])
def both_paths(request, monkeypatch):
    """Run a test through both ways a layer's best swap is found: the full step
    function over front pairs (the default for small fronts) and the answer at the
    current slack with its validity interval (forced by a zero pair cap)."""
    if request.param == "best_at_slack":
        monkeypatch.setattr(floe.method.swaps, "PAIR_CAP", 0)
    return request.param


def pool(heads: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    """[L, H + N]: the per-layer unit pool, heads first (refine's pool indexing)."""
    return torch.cat([heads, neurons], 1)


def retained_cost(cost: torch.Tensor, keep: torch.Tensor) -> float:
    return float(cost.double()[keep].sum())


def improving_swaps(tau, cost, keep, budget) -> list[tuple[int, int, int]]:
    """All valid improving swaps (layer, p, q) by brute force over every pair."""
    tau, cost = tau.double(), cost.double()
    total = retained_cost(cost, keep)
    found = []
    for k in range(tau.shape[0]):
        p_idx = keep[k].nonzero().squeeze(1)
        q_idx = (~keep[k]).nonzero().squeeze(1)
        gain = tau[k, q_idx][:, None] - tau[k, p_idx][None, :]
        after = total - cost[k, p_idx][None, :] + cost[k, q_idx][:, None]
        ok = (gain > 0) & (after <= budget_limit(budget))
        for qi, pi in ok.nonzero().tolist():
            found.append((k, int(p_idx[pi]), int(q_idx[qi])))
    return found


def instance(seed: int, L=3, H=4, N=12, integer=False):
    g = torch.Generator().manual_seed(seed)
    if integer:  # many ties in scores and costs, exact sums hitting the budget
        tau_h = torch.randint(0, 6, (L, H), generator=g).double()
        tau_n = torch.randint(0, 4, (L, N), generator=g).double()
        cost_h = torch.randint(1, 9, (L, H), generator=g).double()
        cost_n = torch.randint(0, 3, (L, N), generator=g).double()
    else:
        tau_h = torch.rand(L, H, generator=g, dtype=torch.float64) ** 2
        tau_n = torch.rand(L, N, generator=g, dtype=torch.float64) ** 2 * 0.5
        cost_h = torch.rand(L, H, generator=g, dtype=torch.float64) * 6
        cost_n = torch.rand(L, N, generator=g, dtype=torch.float64)
    return tau_h, tau_n, cost_h, cost_n


def greedy_start(tau_h, tau_n, cost_h, cost_n, beta):
    t_h, t_n = float(cost_h.mean()), float(cost_n.mean())
    if t_h <= 0 or t_n <= 0:
        t_h, t_n = max(t_h, 1.0), max(t_n, 1.0)
    keep_h, keep_n = greedy_masks(tau_h, tau_n, t_h, t_n, beta)
    budget = budget_of(beta, tau_h.numel(), tau_n.numel(), t_h, t_n)
    return keep_h, keep_n, budget


def random_start(seed, tau_h, tau_n, density=0.5):
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.rand(tau_h.shape, generator=g) < density, torch.rand(tau_n.shape, generator=g) < density


def run_recorded(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget):
    swaps: list[Swap] = []
    result = refine_masks(
        tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget, on_swap=swaps.append
    )
    return result, swaps


def replay_and_check(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget, result, swaps):
    """Undo the swaps from the result to recover the post-fit start, then replay them
    forward, checking every invariant after every step."""
    tau, cost = pool(tau_h, tau_n).double(), pool(cost_h, cost_n).double()
    start_keep = pool(keep_h, keep_n)
    final = pool(result.keep_heads, result.keep_neurons)
    assert result.n_swaps == len(swaps) == len(result.loss_history) - 1

    keep = final.clone()
    for s in reversed(swaps):
        assert keep[s.layer, s.unmasked_unit] and not keep[s.layer, s.masked_unit]
        keep[s.layer, s.unmasked_unit], keep[s.layer, s.masked_unit] = False, True
    fitted = keep

    # The fit step only masks units, exactly n_dropped_to_fit of them, and fits.
    assert not (fitted & ~start_keep).any()
    assert int((start_keep & ~fitted).sum()) == result.n_dropped_to_fit
    assert within_budget(retained_cost(cost, fitted), budget)
    if result.n_dropped_to_fit:
        assert not within_budget(retained_cost(cost, start_keep), budget)
    loss = float(tau[~fitted].sum())
    assert result.loss_history[0] == pytest.approx(loss, rel=1e-12, abs=1e-12)

    keep = fitted.clone()
    for i, s in enumerate(swaps, start=1):
        assert keep[s.layer, s.masked_unit] and not keep[s.layer, s.unmasked_unit]
        gain = float(tau[s.layer, s.unmasked_unit] - tau[s.layer, s.masked_unit])
        assert gain > 0 and s.gain == pytest.approx(gain)
        keep[s.layer, s.masked_unit], keep[s.layer, s.unmasked_unit] = False, True
        cost_now = retained_cost(cost, keep)
        assert within_budget(cost_now, budget), f"budget broken after swap {i}"
        assert s.cost_after == pytest.approx(cost_now, rel=1e-12)
        assert result.loss_history[i] == pytest.approx(float(tau[~keep].sum()), rel=1e-9, abs=1e-12)
    assert torch.equal(keep, final)

    history = result.loss_history
    assert all(a >= b for a, b in zip(history, history[1:])), "loss rose"
    assert history[-1] == pytest.approx(
        masked_loss(tau_h, tau_n, result.keep_heads, result.keep_neurons), rel=1e-9, abs=1e-12
    )


def check_local_optimum(tau_h, tau_n, cost_h, cost_n, result, budget):
    tau, cost = pool(tau_h, tau_n), pool(cost_h, cost_n)
    final = pool(result.keep_heads, result.keep_neurons)
    assert within_budget(retained_cost(cost, final), budget)
    assert improving_swaps(tau, cost, final, budget) == []


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("start", ["greedy", "random"])
def test_invariants_and_no_improving_swap_left(integer, start, both_paths):
    for seed in range(8):
        tau_h, tau_n, cost_h, cost_n = instance(seed, integer=integer)
        for beta in (0.2, 0.5, 0.8):
            if start == "greedy":
                keep_h, keep_n, budget = greedy_start(tau_h, tau_n, cost_h, cost_n, beta)
            else:
                keep_h, keep_n = random_start(seed, tau_h, tau_n)
                budget = beta * float(pool(cost_h, cost_n).sum())
            result, swaps = run_recorded(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
            replay_and_check(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget, result, swaps)
            check_local_optimum(tau_h, tau_n, cost_h, cost_n, result, budget)


def test_random_starts_do_swap_and_drop():
    # Guards against the invariant tests passing vacuously.
    n_swaps = n_drops = 0
    for seed in range(20):
        tau_h, tau_n, cost_h, cost_n = instance(seed)
        keep_h, keep_n = random_start(seed, tau_h, tau_n, density=0.7)
        budget = 0.5 * float(pool(cost_h, cost_n).sum())
        result = refine_masks(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
        n_swaps += result.n_swaps
        n_drops += result.n_dropped_to_fit
    assert n_swaps > 20 and n_drops > 20


@pytest.mark.parametrize("integer", [False, True])
def test_many_swaps_from_a_random_start(both_paths, integer):
    # Hundreds of swaps with the shared slack moving every time: stresses the caching.
    tau_h, tau_n, cost_h, cost_n = instance(7, L=4, H=8, N=150, integer=integer)
    keep_h, keep_n = random_start(7, tau_h, tau_n)
    budget = retained_cost(pool(cost_h, cost_n), pool(keep_h, keep_n))
    result, swaps = run_recorded(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
    assert result.n_swaps > 100
    replay_and_check(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget, result, swaps)
    check_local_optimum(tau_h, tau_n, cost_h, cost_n, result, budget)


def test_both_paths_agree_exactly_even_with_ties(monkeypatch):
    # Integer scores and costs: many equal gains and needs; the tie rules must match.
    for seed in range(15):
        tau_h, tau_n, cost_h, cost_n = instance(seed, L=3, H=4, N=20, integer=True)
        keep_h, keep_n = random_start(seed, tau_h, tau_n)
        budget = 0.5 * float(pool(cost_h, cost_n).sum())
        default = run_recorded(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
        with monkeypatch.context() as m:
            m.setattr(floe.method.swaps, "PAIR_CAP", 0)
            at_slack = run_recorded(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
        assert default[1] == at_slack[1]
        assert torch.equal(default[0].keep_neurons, at_slack[0].keep_neurons)


def test_step_lookup_takes_the_last_step_within_the_slack():
    best = floe.method.swaps.LayerBest(
        needs=[-1.0, 2.0, 2.0], gains=[0.5, 1.0, 1.5], swaps=[(0, 1), (2, 3), (4, 5)]
    )
    assert best.best_at(-1.5) == (-math.inf, -1, -1)
    assert best.best_at(-1.0) == (0.5, 0, 1)  # need == slack is valid
    assert best.best_at(1.999) == (0.5, 0, 1)
    assert best.best_at(2.0) == (1.5, 4, 5)
    assert best.holds_at(1e9) and floe.method.swaps.LayerBest([], [], [], lo=0.0, hi=1.0).holds_at(1.0) is False


def test_fronts_match_brute_force_dominance():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        tau = torch.rand(40, generator=g, dtype=torch.float64)
        cost = torch.rand(40, generator=g, dtype=torch.float64)
        keep = torch.rand(40, generator=g) < 0.5
        layer = floe.method.swaps.index_layer(tau, cost)
        kept_by_cost = keep[layer.by_cost]
        masked = set(layer.by_cost[floe.method.swaps.masked_front(kept_by_cost, layer.tau_by_cost, 0.2)].tolist())
        retained = set(layer.by_cost[floe.method.swaps.retained_front(kept_by_cost, layer.tau_by_cost, 0.8)].tolist())
        m_idx, r_idx = (~keep).nonzero().squeeze(1).tolist(), keep.nonzero().squeeze(1).tolist()
        expect_m = {
            q for q in m_idx
            if tau[q] > 0.2 and not any(cost[o] <= cost[q] and tau[o] >= tau[q] for o in m_idx if o != q)
        }
        expect_r = {
            p for p in r_idx
            if tau[p] < 0.8 and not any(cost[o] >= cost[p] and tau[o] <= tau[p] for o in r_idx if o != p)
        }
        assert masked == expect_m and retained == expect_r


def naive_refine(tau, cost, keep, budget) -> list[tuple[int, int, int]]:
    """Reference Algorithm 2 on a fitted start: score every pair at every step."""
    tau, cost, keep = tau.double(), cost.double(), keep.clone()
    applied = []
    while True:
        total = retained_cost(cost, keep)
        gain = tau[:, None, :] - tau[:, :, None]  # [L, p, q]
        after = total - cost[:, :, None] + cost[:, None, :]
        ok = keep[:, :, None] & ~keep[:, None, :] & (gain > 0) & (after <= budget_limit(budget))
        if not ok.any():
            return applied
        best = torch.where(ok, gain, -math.inf).reshape(-1).argmax()
        k, p, q = (int(i) for i in torch.unravel_index(best, ok.shape))
        keep[k, p], keep[k, q] = False, True
        applied.append((k, p, q))


def test_swap_sequence_matches_naive_best_first(both_paths):
    # Distinct random floats: no ties, so the best-first sequence is unique.
    # Dense gains across 6 layers: a cached layer answer that outlives its slack
    # interval shows up as a different sequence.
    for seed in range(10):
        tau_h, tau_n, cost_h, cost_n = instance(seed, L=6, H=3, N=30)
        keep_h, keep_n = random_start(seed, tau_h, tau_n)
        budget = retained_cost(pool(cost_h, cost_n), pool(keep_h, keep_n)) * (1 + seed % 3 / 10)
        result, swaps = run_recorded(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
        assert result.n_dropped_to_fit == 0
        expected = naive_refine(pool(tau_h, tau_n), pool(cost_h, cost_n), pool(keep_h, keep_n), budget)
        assert [(s.layer, s.masked_unit, s.unmasked_unit) for s in swaps] == expected


def test_hand_computed_drop_then_swap(both_paths):
    # One layer, pool = [head | n0 n1 n2].
    tau_h, tau_n = torch.tensor([[4.0]]), torch.tensor([[1.0, 3.0, 2.0]])
    cost_h, cost_n = torch.tensor([[4.0]]), torch.tensor([[1.0, 1.0, 4.0]])
    keep_h, keep_n = torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    result, swaps = run_recorded(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, 5.0)
    # tau/cost: head 1.0, n0 1.0, n1 3.0, n2 0.5. Cost 10 > 5: drop n2 (6 > 5), then
    # the head (tied with n0, lower pool index first) -> cost 2, slack 3.
    assert result.n_dropped_to_fit == 2
    assert result.loss_history[0] == pytest.approx(6.0)
    # Best swap: mask n0 (tau 1, cost 1), unmask the head (tau 4, cost 4): cost 5.
    assert [(s.layer, s.masked_unit, s.unmasked_unit) for s in swaps] == [(0, 1, 0)]
    assert swaps[0].gain == pytest.approx(3.0) and swaps[0].cost_after == pytest.approx(5.0)
    assert result.keep_heads.tolist() == [[True]]
    assert result.keep_neurons.tolist() == [[False, True, False]]
    assert result.loss_history == pytest.approx([6.0, 3.0])


def test_swaps_stay_within_a_layer_and_cross_types(both_paths):
    # Layer 0 has a masked head worth more than a retained neuron; layer 1 the reverse.
    tau_h = torch.tensor([[5.0, 0.1], [0.2, 0.3]])
    tau_n = torch.tensor([[1.0, 2.0], [4.0, 0.5]])
    cost_h = torch.tensor([[2.0, 2.0], [2.0, 2.0]])
    cost_n = torch.ones(2, 2) * 2.0
    keep_h = torch.tensor([[False, False], [True, True]])
    keep_n = torch.tensor([[True, True], [False, False]])
    result, swaps = run_recorded(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, 8.0)
    # Equal costs, no slack: best first, layer 0 gains 4.0 (neuron 0 -> head 0), layer 1
    # 3.8 (head 0 -> neuron 0), then layer 1 again 0.2 (head 1 -> neuron 1).
    assert [(s.layer, s.masked_unit, s.unmasked_unit) for s in swaps] == [
        (0, 2, 0), (1, 0, 2), (1, 1, 3)
    ]
    assert result.keep_heads.tolist() == [[True, False], [False, False]]
    assert result.keep_neurons.tolist() == [[False, True], [True, True]]


def test_shared_slack_is_spent_by_the_best_swap_first(both_paths):
    # Slack 1 pays for one cost-increasing swap only: the larger gain (layer 1) wins it,
    # after which layer 0's swap no longer fits.
    tau_h, tau_n = torch.tensor([[3.0], [9.0]]), torch.tensor([[1.0], [1.0]])
    cost_h, cost_n = torch.tensor([[2.0], [2.0]]), torch.tensor([[1.0], [1.0]])
    keep_h = torch.zeros(2, 1, dtype=torch.bool)
    keep_n = torch.ones(2, 1, dtype=torch.bool)
    result, swaps = run_recorded(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, 3.0)
    assert [(s.layer, s.masked_unit, s.unmasked_unit) for s in swaps] == [(1, 1, 0)]
    assert result.keep_heads.tolist() == [[False], [True]]


def test_no_swaps_when_everything_or_nothing_is_retained():
    tau_h, tau_n, cost_h, cost_n = instance(0)
    full = refine_masks(
        tau_h, tau_n, cost_h, cost_n,
        torch.ones_like(tau_h, dtype=torch.bool), torch.ones_like(tau_n, dtype=torch.bool),
        float(pool(cost_h, cost_n).sum()) * 2,
    )
    assert full.n_swaps == 0 and full.keep_heads.all() and full.keep_neurons.all()
    empty = refine_masks(
        tau_h, tau_n, cost_h, cost_n,
        torch.zeros_like(tau_h, dtype=torch.bool), torch.zeros_like(tau_n, dtype=torch.bool), 1.0,
    )
    assert empty.n_swaps == 0 and not empty.keep_heads.any() and not empty.keep_neurons.any()


def test_zero_budget_drops_every_costly_unit():
    tau_h, tau_n, cost_h, cost_n = instance(4, integer=True)  # some neurons cost 0
    keep_h = torch.ones_like(tau_h, dtype=torch.bool)
    keep_n = torch.ones_like(tau_n, dtype=torch.bool)
    result = refine_masks(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, 0.0)
    assert not result.keep_heads.any()
    assert torch.equal(result.keep_neurons, cost_n == 0)


def test_inputs_untouched_and_deterministic():
    tau_h, tau_n, cost_h, cost_n = instance(5, integer=True)
    keep_h, keep_n = random_start(5, tau_h, tau_n, density=0.8)
    before = (keep_h.clone(), keep_n.clone())
    budget = 0.5 * float(pool(cost_h, cost_n).sum())
    a = refine_masks(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
    b = refine_masks(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
    assert torch.equal(keep_h, before[0]) and torch.equal(keep_n, before[1])
    assert isinstance(a, RefineResult)
    assert torch.equal(a.keep_heads, b.keep_heads) and torch.equal(a.keep_neurons, b.keep_neurons)
    assert a.loss_history == b.loss_history


def test_7b_shape_from_greedy_start():
    L, H, N = 32, 32, 11008
    g = torch.Generator().manual_seed(0)
    tau_h = torch.rand(L, H, generator=g, dtype=torch.float64) ** 2
    tau_n = torch.rand(L, N, generator=g, dtype=torch.float64) ** 2 * 0.05
    cost_h = torch.rand(L, H, generator=g, dtype=torch.float64) * 340
    cost_n = torch.rand(L, N, generator=g, dtype=torch.float64) * 2
    keep_h, keep_n, budget = greedy_start(tau_h, tau_n, cost_h, cost_n, 0.5)
    result, swaps = run_recorded(tau_h, tau_n, cost_h, cost_n, keep_h, keep_n, budget)
    assert result.n_swaps > 0
    tau, cost = pool(tau_h, tau_n), pool(cost_h, cost_n)
    final = pool(result.keep_heads, result.keep_neurons)
    assert within_budget(retained_cost(cost, final), budget)
    history = result.loss_history
    assert all(a >= b for a, b in zip(history, history[1:]))
    assert history[-1] == pytest.approx(float(tau[~final].sum()), rel=1e-9)
    assert history[-1] < masked_loss(tau_h, tau_n, keep_h, keep_n)
    # No improving valid swap, by brute force over the pairs that could gain at all:
    # masked q above the layer's least retained tau, retained p below the top such q.
    slack = budget_limit(budget) - retained_cost(cost, final)
    for k in range(L):
        kept, tau_k, cost_k = final[k], tau[k], cost[k]
        least = float(torch.where(kept, tau_k, math.inf).min())
        q = ((~kept) & (tau_k > least)).nonzero().squeeze(1)
        top = float(tau_k.index_select(0, q).max()) if q.numel() else -math.inf
        p = (kept & (tau_k < top)).nonzero().squeeze(1)
        tau_p, cost_p = tau_k.index_select(0, p), cost_k.index_select(0, p)
        for tau_q, cost_q in zip(tau_k.index_select(0, q).tolist(), cost_k.index_select(0, q).tolist()):
            improving = (tau_q - tau_p > 0) & (cost_q - cost_p <= slack)
            assert not improving.any(), f"improving swap left in layer {k}"


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(budget=-1.0), "budget"),
        (dict(budget=math.nan), "budget"),
        (dict(cost_neurons=-torch.ones(2, 3)), "cost_neurons"),
        (dict(cost_heads=torch.ones(2, 3)), "cost_heads"),
        (dict(keep_heads=torch.ones(2, 2)), "keep_heads"),
        (dict(tau_neurons=torch.full((2, 3), math.nan)), "tau_neurons"),
        (dict(tau_heads=-torch.ones(2, 2)), "tau_heads"),
    ],
)
def test_bad_inputs(change, match):
    args = dict(
        tau_heads=torch.ones(2, 2), tau_neurons=torch.ones(2, 3),
        cost_heads=torch.ones(2, 2), cost_neurons=torch.ones(2, 3),
        keep_heads=torch.ones(2, 2, dtype=torch.bool), keep_neurons=torch.ones(2, 3, dtype=torch.bool),
        budget=5.0,
    )
    args.update(change)
    with pytest.raises(ValueError, match=match):
        refine_masks(**args)


def test_zero_budget_keeps_zero_cost_units_whatever_the_summation_order():
    # Float costs: the running sum in tau/cost order and the flat sum differ by rounding,
    # which used to reach into the zero-cost units (99 of these 300 seeds).
    from floe.method.refine import drop_to_fit
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        cost = torch.rand(3, 20, generator=g, dtype=torch.float64)
        cost[cost < 0.2] = 0
        tau = torch.rand(3, 20, generator=g, dtype=torch.float64)
        keep = torch.ones(3, 20, dtype=torch.bool)
        dropped = drop_to_fit(tau, cost, keep, 0.0)
        assert torch.equal(keep, cost == 0), seed
        assert dropped == int((cost > 0).sum())


def test_hand_computed_fill_step():
    from floe.method.refine import fill_to_budget
    # One layer of 5 units; retained: unit 0 (cost 2). Limit 6: leftover 4.
    tau = torch.tensor([[1.0, 3.0, 2.0, 5.0, 0.5]], dtype=torch.float64)
    cost = torch.tensor([[2.0, 1.0, 1.0, 5.0, 0.0]], dtype=torch.float64)
    keep = torch.tensor([[True, False, False, False, False]])
    # tau/cost: unit 4 inf (free), 1: 3, 2: 2, 3: 1. Add 4 (0), 1 (cost 3), 2 (cost 4);
    # unit 3 (cost 5) no longer fits, and is skipped.
    assert fill_to_budget(tau, cost, keep, 6.0) == 3
    assert keep.tolist() == [[True, True, True, False, True]]


def test_refine_with_fill_spends_the_leftover_budget(both_paths):
    tau_h, tau_n, cost_h, cost_n = instance(2)
    greedy_h, greedy_n = greedy_masks(tau_h, tau_n, cost_h.mean(), cost_n.mean(), 0.5)
    budget = 0.5 * float(pool(cost_h, cost_n).double().sum())
    plain = refine_masks(tau_h, tau_n, cost_h, cost_n, greedy_h, greedy_n, budget)
    filled = refine_masks(tau_h, tau_n, cost_h, cost_n, greedy_h, greedy_n, budget, fill=True)
    keep_plain = pool(plain.keep_heads, plain.keep_neurons)
    keep_filled = pool(filled.keep_heads, filled.keep_neurons)
    cost = pool(cost_h, cost_n)
    assert plain.n_filled == 0 and filled.n_filled == int((keep_filled & ~keep_plain).sum()) == 2
    assert bool((keep_filled | ~keep_plain).all())  # only additions after the same swaps
    assert within_budget(retained_cost(cost, keep_filled), budget)
    # No masked unit would still fit the leftover budget.
    left = budget_limit(budget) - retained_cost(cost, keep_filled)
    assert bool((cost[~keep_filled] > left).all())
    assert filled.loss_history[:-1] == plain.loss_history
    assert filled.loss_history[-1] == pytest.approx(float(pool(tau_h, tau_n)[~keep_filled].sum()))
