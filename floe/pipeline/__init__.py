"""The experiment pipeline: data, training, warm-up, scoring, policies, sparse training,
rank search, comparison, per-layer probe, evaluation and export; each stage a cached run."""

__all__ = ["compare", "data", "evaluate", "export", "policies", "probe", "ranksearch", "score", "sparse", "study",
           "train", "validation", "warmup"]
