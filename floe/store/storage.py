"""Optuna RDB storages shared by workers (probes, compares, rank searches): opening one with
heartbeats, and its URL without the password for logs and summaries.

Heartbeats: every running trial writes one every ``FLOE_HEARTBEAT_SECONDS`` (default 30); a
trial silent for four intervals (120 s) belongs to a dead worker, and the next worker that
looks fails it and queues it again (RetryHeartbeatStaleTrialCallback). Tests shorten it.
"""
from __future__ import annotations

import os
import re
import time

__all__ = ["HEARTBEAT_ENV", "heartbeat_seconds", "open_storage", "redact"]

HEARTBEAT_ENV = "FLOE_HEARTBEAT_SECONDS"
_GRACE_BEATS = 4   # missed heartbeats before a trial counts as its worker's death
_CREATE_TRIES = 4  # workers started at once on an empty database race to create the tables


def heartbeat_seconds() -> int:
    """The heartbeat interval of shared trials (also how often a waiting worker looks)."""
    text = os.environ.get(HEARTBEAT_ENV, "30")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{HEARTBEAT_ENV} must be a whole number of seconds >= 1, got {text!r}")
    return int(text)


def open_storage(url: str):
    """An Optuna RDB storage, with heartbeats so trials of killed workers are retried."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    beat = heartbeat_seconds()
    tries = 0
    while True:
        tries += 1
        try:
            return _rdb_storage(url, beat)
        except Exception as e:  # sqlalchemy raises many types for bad URLs and unreachable hosts
            if not (_lost_create_race(e) and tries < _CREATE_TRIES):
                raise ValueError(f"cannot open the Optuna storage {redact(url)}: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
        time.sleep(0.5 * tries)  # another worker is creating the tables: they exist soon


def _rdb_storage(url: str, beat: int):
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    with warnings.catch_warnings():  # heartbeats are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, heartbeat_interval=beat, grace_period=_GRACE_BEATS * beat,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))


def _lost_create_race(error: Exception) -> bool:
    """A concurrent CREATE TABLE of the same schema (PostgreSQL: a duplicate type or table)."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError
    return isinstance(error, (IntegrityError, ProgrammingError)) and (
        "already exists" in str(error) or "duplicate key" in str(error))


def redact(url: str) -> str:
    """The URL without its password, for logs and summaries."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)
