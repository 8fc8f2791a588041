"""The FLoE method as functions on tensors and models: Taylor costs, mask Fisher, greedy
mask search, swap refinement, least-squares tuning, layer importance, baselines, and the
agreement of layer rankings with measured gains."""

__all__ = ["agreement", "baselines", "fisher", "importance", "masks", "normal_equations", "refine",
           "search", "stats", "swaps", "taylor", "tune"]
