"""The linear algebra of the mask tuning (METHOD 7), as pure functions on tensors: each
unit's Gram blocks and right-hand sides, the damped ridge solve, the quadratic error, and
the accumulators of one component's normal equations over calibration batches."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from floe.method.masks import stat_dtype

__all__ = ["ComponentFit", "NormalEquations", "attention_normal_equations", "ffn_normal_equations",
           "quadratic_error", "solve_ridge", "unit_gram", "unit_rhs"]




def unit_gram(weight: torch.Tensor, covariance: torch.Tensor, unit_size: int) -> torch.Tensor:
    """A^T A [U, U] for A's columns W_u a_u: blocksum_{d x d}((W^T W) * C).

    weight [out, U*d] (the units' columns), covariance C = sum_t a(t) a(t)^T [U*d, U*d].
    """
    units = weight.shape[1] // unit_size
    prod = (weight.T @ weight).to(covariance.dtype) * covariance
    return prod.view(units, unit_size, units, unit_size).sum((1, 3))


def unit_rhs(weight: torch.Tensor, acts: torch.Tensor, target: torch.Tensor,
             unit_size: int) -> torch.Tensor:
    """A^T b [U] = sum_t blocksum_d(a(t) * (W^T b(t))), acts [T, U*d], target b [T, out]."""
    return ((target @ weight) * acts).sum(0).view(-1, unit_size).sum(1)


def ffn_normal_equations(W2: torch.Tensor, H: torch.Tensor,
                         target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A^T A, A^T b) for l = sum_j u_j W2[:, j] H[:, j]: A^T A = (W2^T W2) * (H^T H).

    W2 [hidden, N], H [T, N] (the neuron activations, one row per token), target [T, hidden].
    """
    return unit_gram(W2, H.T @ H, 1), unit_rhs(W2, H, target, 1)


def attention_normal_equations(Wo: torch.Tensor, acts: torch.Tensor, target: torch.Tensor,
                               head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A^T A, A^T b) for l = sum_h u_h Wo[:, h-slice] a_h, acts [T, H*d], target [T, hidden]."""
    return unit_gram(Wo, acts.T @ acts, head_dim), unit_rhs(Wo, acts, target, head_dim)


def solve_ridge(gram: torch.Tensor, rhs: torch.Tensor, damping: float) -> torch.Tensor:
    """u = (G + lambda I)^-1 r, lambda = damping * mean(diag(G)), in float64.

    Damping pulls u toward 0 (m toward 1) and makes a rank-deficient G (fewer tokens than
    units, dead units) solvable. damping = 0 gives the least-squares solution of smallest
    norm.
    """
    gram, rhs = gram.double(), rhs.double()
    if gram.numel() == 0:
        return rhs.clone()
    if damping > 0:
        lam = damping * gram.diagonal().mean().clamp(min=torch.finfo(torch.float64).tiny)
        damped = gram + lam * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            return torch.cholesky_solve(rhs[:, None], factor)[:, 0]
        gram = damped  # not numerically positive definite: use the pseudo-inverse
    return torch.linalg.pinv(gram, hermitian=True) @ rhs


def quadratic_error(error_binary: torch.Tensor | float, gram: torch.Tensor, rhs: torch.Tensor,
                    u: torch.Tensor) -> torch.Tensor:
    """||A u - b||^2 = ||b||^2 - 2 u.A^T b + u^T A^T A u, from the normal equations."""
    gram, rhs, u = gram.double(), rhs.double(), u.double()
    return error_binary - 2 * (u @ rhs) + u @ gram @ u


# ---------------------------------------------------------- accumulating one component


@dataclass
class ComponentFit:
    """The outcome for one component (a layer's heads or its neurons)."""

    values: torch.Tensor   # [U] float64: tuned m on retained units, 0 on masked ones
    error_binary: float    # ||b||^2: the error of the binary mask (u = 0)
    error_tuned: float     # ||A u - b||^2 of the values returned (<= error_binary)
    fallback: bool         # the solution was rejected and the binary mask kept


class NormalEquations:
    """Running C = sum_t a_R a_R^T, A^T b and ||b||^2 of one component, retained units only."""

    def __init__(self, weight: torch.Tensor, keep: torch.Tensor, unit_size: int):
        self.unit_size = unit_size
        self.keep = keep.to(weight.device, torch.bool)
        units = self.keep.nonzero().flatten()
        self.columns = (units[:, None] * unit_size
                        + torch.arange(unit_size, device=weight.device)).flatten()
        dtype = stat_dtype(weight.dtype)
        self.weight = weight.detach()[:, self.columns].to(dtype)  # W_R [out, R*d]
        n = len(self.columns)
        self.covariance = torch.zeros(n, n, device=weight.device, dtype=dtype)
        self.rhs = torch.zeros(len(units), device=weight.device, dtype=dtype)
        self.error_binary = torch.zeros((), device=weight.device, dtype=torch.float64)

    def add(self, acts: torch.Tensor, target: torch.Tensor) -> None:
        """acts [T, U*d]: the projection's inputs before masking; target: b [T, out]."""
        a = acts[:, self.columns].to(self.covariance.dtype)
        target = target.to(self.covariance.dtype)
        self.covariance.addmm_(a.T, a)
        self.rhs += unit_rhs(self.weight, a, target, self.unit_size)
        self.error_binary += target.double().square().sum()

    def solve(self, damping: float, bound: float) -> ComponentFit:
        """Ridge solution; rejected (binary mask kept) if any m is outside [-bound, bound]
        or it does not lower the error."""
        binary = self.keep.to(torch.float64)
        e0 = self.error_binary
        if len(self.columns) == 0:
            return ComponentFit(binary, float(e0), float(e0), False)
        gram = unit_gram(self.weight, self.covariance.double(), self.unit_size)
        # Values are returned (and used downstream) in fp32: score what is returned.
        m = (1 + solve_ridge(gram, self.rhs, damping)).float().double()
        e1 = quadratic_error(e0, gram, self.rhs, m - 1)
        accept = torch.isfinite(e1) & (e1 <= e0) & (m.abs() <= bound).all()
        if not bool(accept):  # one host sync per component
            return ComponentFit(binary, float(e0), float(e0), True)
        values = torch.zeros_like(binary)
        values[self.keep] = m
        return ComponentFit(values, float(e0), float(e1), False)
