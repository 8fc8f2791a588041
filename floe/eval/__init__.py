"""Evaluation of a base or adapted model: held-out loss and lm-evaluation-harness benchmarks."""

__all__ = ["evaluate", "lmeval"]
