"""The FLoE method as functions on tensors and models: Taylor costs, mask Fisher, greedy
mask search, swap refinement, least-squares tuning, layer importance and baselines."""

__all__ = ["baselines", "fisher", "importance", "masks", "normal_equations", "refine", "search", "taylor", "tune"]
