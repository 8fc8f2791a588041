"""Adapters: HydraLoRA (one shared A, several B experts, a router) on the target
projections of chosen decoder layers."""

__all__ = ["hydralora"]
