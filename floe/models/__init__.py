"""Models: all architecture access (``arch``) and loading the embedded or a local model
(``load``)."""

__all__ = ["arch", "load"]
