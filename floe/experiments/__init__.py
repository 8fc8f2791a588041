"""Experiments over runs: the per-layer probe and its cheap schedules, the policy compare, the
data-ratio stability study, the rank search, and the validation of rankings against a probe."""

__all__ = ["cheap_probe", "compare", "probe", "ranksearch", "study", "validation"]
