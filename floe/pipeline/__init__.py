"""The experiment pipeline: data, training, warm-up, scoring, policies, sparse training,
rank search, comparison, evaluation and export; each stage a cached run."""

__all__ = ["compare", "data", "evaluate", "export", "policies", "ranksearch", "score", "sparse", "study",
           "train", "warmup"]
