"""Storage: config hashing and option specs, the run cache (atomic writes, locks, status),
and the registry of background jobs. Imports nothing else of floe."""

__all__ = ["config", "jobs", "runs", "storage"]
