"""The stages of one run: data, training, warm-up, scoring, layer-selection policies, sparse
training, export and generation, the memory plan and the trackers; each stage a cached run."""

__all__ = ["data", "datafiles", "export", "generate", "plan", "policies", "score", "sparse", "trackers",
           "train", "warmup"]
