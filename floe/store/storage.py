"""Optuna RDB storages shared by workers (probes, rank searches): opening one with heartbeats,
and its URL without the password for logs and summaries."""
from __future__ import annotations

import re

__all__ = ["open_storage", "redact"]


def open_storage(url: str):
    """An Optuna RDB storage, with heartbeats so trials of killed workers are retried."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=30, grace_period=120,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as e:  # sqlalchemy raises many types for bad URLs and unreachable hosts
        raise ValueError(f"cannot open the Optuna storage {redact(url)}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0]}") from None


def redact(url: str) -> str:
    """The URL without its password, for logs and summaries."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)
