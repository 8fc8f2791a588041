"""Experiments over runs: the per-layer probe and its cheap schedules, the policy compare, the
data-ratio stability study, the rank search, the validation of rankings against a probe, and
the cells of a probe or compare shared by workers through an Optuna storage."""

__all__ = ["cheap_probe", "compare", "probe", "ranksearch", "shared", "study", "validation"]
