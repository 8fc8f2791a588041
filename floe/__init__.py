"""FLoE: Fisher-based layer selection for sparse HydraLoRA adaptation."""
__version__ = "0.3.0"

# The version in each run kind's key. A kind's entry changes only when what its runs
# compute changes, so a release keeps the cached runs it did not change. 0.3.0 changed
# scoring (new baselines, corrected layers.json fields) and evaluation (lm-eval); warm-ups
# and sparse trainings compute what 0.2.0 did, so their runs stay valid.
KEY_VERSIONS = {"warmup": "0.2.0", "train": "0.2.0", "score": "0.3.0", "study": "0.3.0",
                "compare": "0.3.0", "eval": "0.3.0", "probe": "0.3.0"}
