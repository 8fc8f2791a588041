"""FLoE: Fisher-based layer selection for sparse HydraLoRA adaptation."""
__version__ = "0.1.0"
