"""Storage: artifact shapes, config hashing and option specs, the run cache (atomic writes, locks, status),
and the registry of background jobs. Imports nothing else of floe."""

__all__ = ["archive", "artifacts", "config", "jobs", "runs", "set_search", "storage", "supervisor"]
