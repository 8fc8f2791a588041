"""Layer importance from mask values, the ranking, and the baseline rankings.

After determination, refinement and tuning every unit i (head or neuron) of layer k has a
mask value m_i. Weighting each unit by n_i, the number of pretrained weights it gates,

    s_k = 1 - sum_{i in k} n_i * clip(m_i, 0, 1) / sum_{i in k} n_i ,

the share of layer k's pretrained capacity the adapted model no longer needs. High s_k
means: adapt this layer. Layers are ranked by s_k, largest first, ties to the lower index.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["all_layers", "check_n_layers", "check_values", "layer_components", "layer_scores",
           "norm_ranking", "random_ranking", "rank_layers", "retained_share", "unit_weight_counts",
           "unit_weights"]


def unit_weight_counts(hidden: int, head_dim: int, group: int) -> tuple[float, float]:
    """Pretrained weights gated by one head and by one FFN neuron (METHOD section 3).

    head:   q rows + o columns (2 * hidden * head_dim) plus its 1/group share of the
            k and v rows of its K/V head (2 * hidden * head_dim / group);
    neuron: row of gate_proj and up_proj, column of down_proj (3 * hidden).
    """
    for name, value in (("hidden", hidden), ("head_dim", head_dim), ("group", group)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    per_projection = hidden * head_dim
    return 2.0 * per_projection + 2.0 * per_projection / group, 3.0 * hidden


def check_values(name: str, values: Tensor) -> None:
    if values.dim() != 2 or values.shape[1] == 0:
        raise ValueError(
            f"{name} must be 2-D [layers, units] with units > 0, got {tuple(values.shape)}"
        )
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contains non-finite mask values (nan or inf)")


def unit_weights(name: str, weights: float | Tensor, like: Tensor) -> Tensor:
    """Per-unit weight counts broadcast to the shape of the mask values, float64."""
    w = torch.as_tensor(weights, dtype=torch.float64, device=like.device)
    try:
        w = torch.broadcast_to(w, like.shape)
    except RuntimeError as err:
        raise ValueError(
            f"{name} of shape {tuple(w.shape)} does not broadcast to {tuple(like.shape)}"
        ) from err
    if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
        raise ValueError(f"{name} must be finite and > 0 (weights gated per unit)")
    return w


def retained_share(values: Tensor, weights: Tensor) -> Tensor:
    """Per layer: sum_i n_i * clip(m_i, 0, 1) / sum_i n_i."""
    kept = weights * values.double().clamp(0.0, 1.0)
    return kept.sum(1) / weights.sum(1)


def layer_components(
    head_values: Tensor,
    neuron_values: Tensor,
    head_weights: float | Tensor,
    neuron_weights: float | Tensor,
) -> dict[str, Tensor]:
    """Per-layer parts of the score, each a float64 tensor [L]:

    head_share      sum_h n_h clip(m_h, 0, 1) / sum_h n_h   (retained head capacity)
    neuron_share    the same over the FFN neurons
    head_fraction   sum_h n_h / (sum_h n_h + sum_j n_j)     (heads' part of the layer)
    retained_share  the same ratio over all units of the layer
    score           s_k = 1 - retained_share

    Weights: a scalar (every unit gates as many weights, see unit_weight_counts) or a
    tensor broadcastable to the values (per-unit counts). For the share before tuning,
    pass the binary masks as values.
    """
    check_values("head_values", head_values)
    check_values("neuron_values", neuron_values)
    if head_values.shape[0] != neuron_values.shape[0]:
        raise ValueError(
            f"head_values and neuron_values disagree on the number of layers: "
            f"{head_values.shape[0]} vs {neuron_values.shape[0]}"
        )
    w_h = unit_weights("head_weights", head_weights, head_values)
    w_n = unit_weights("neuron_weights", neuron_weights, neuron_values)
    head_share = retained_share(head_values, w_h)
    neuron_share = retained_share(neuron_values, w_n)
    capacity_h, capacity_n = w_h.sum(1), w_n.sum(1)
    head_fraction = capacity_h / (capacity_h + capacity_n)
    # Weighted mean of the two shares = the ratio over the whole layer.
    retained = head_fraction * head_share + (1.0 - head_fraction) * neuron_share
    return {
        "head_share": head_share,
        "neuron_share": neuron_share,
        "head_fraction": head_fraction,
        "retained_share": retained,
        "score": 1.0 - retained,
    }


def layer_scores(
    head_values: Tensor,
    neuron_values: Tensor,
    head_weights: float | Tensor,
    neuron_weights: float | Tensor,
) -> Tensor:
    """s_k = 1 - sum_i n_i clip(m_i, 0, 1) / sum_i n_i over the units of layer k; [L]."""
    return layer_components(head_values, neuron_values, head_weights, neuron_weights)["score"]


def rank_layers(scores: Tensor) -> list[int]:
    """Layer indices by score, largest first; ties go to the lower layer index."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [layers], got shape {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain non-finite values (nan or inf)")
    # A stable ascending sort of -scores keeps tied layers in index order.
    return torch.sort(-scores.double(), stable=True).indices.tolist()


def check_n_layers(n_layers: int) -> None:
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 0:
        raise ValueError(f"n_layers must be a non-negative integer, got {n_layers!r}")


def random_ranking(n_layers: int, seed: int) -> list[int]:
    """Baseline: a uniformly random order of the layers, reproducible from `seed`."""
    check_n_layers(n_layers)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_layers, generator=generator).tolist()


def norm_ranking(norms: Tensor) -> list[int]:
    """Baseline: layers by a per-layer norm (e.g. ||Delta W|| of the warm-up adapter, or
    of the pretrained weights), largest first; ties to the lower index."""
    if norms.dim() == 1 and bool((norms < 0).any()):
        raise ValueError("norms must be >= 0")
    return rank_layers(norms)


def all_layers(n_layers: int) -> list[int]:
    """Baseline: every layer, in index order."""
    check_n_layers(n_layers)
    return list(range(n_layers))
