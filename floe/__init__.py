"""FLoE: Fisher-based layer selection for sparse HydraLoRA adaptation."""
__version__ = "0.3.0"  # in every run key: a change in what runs compute bumps it
