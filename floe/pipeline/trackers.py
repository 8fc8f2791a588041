"""Experiment trackers: TensorBoard or Weights & Biases, through accelerate's tracker
classes (``accelerate.tracking``).

Inside ``tracking(config)``, every progress record a run logs (``Run.log``: each training
step's loss, learning rate and tokens/s; each rank-search trial's r and value) also goes
to that run's tracker, started at its first record: TensorBoard event files in the run
folder (``<run>/tensorboard``, written with tensorboardX: no TensorBoard install needed to
write them), or a wandb run named after the run, offline in ``<run>/wandb`` unless
``WANDB_MODE`` or ``WANDB_API_KEY`` say otherwise (wandb is an optional extra).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from floe.store.config import option
from floe.store.runs import Run, log_listener

if TYPE_CHECKING:
    from accelerate.tracking import GeneralTracker

__all__ = ["REPORT_TO", "TENSORBOARD_DIR", "WANDB_DIR", "ReportTo", "TrackConfig", "record_metrics", "record_step",
           "tracker_logs", "tracking"]

TENSORBOARD_DIR, WANDB_DIR = "tensorboard", "wandb"
ReportTo = Literal["none", "tensorboard", "wandb"]
REPORT_TO: tuple[str, ...] = get_args(ReportTo)
# Bookkeeping fields of a progress record, not curves.
_NOT_METRICS = {"time", "step", "total_steps", "epoch", "elapsed", "eta", "done", "total", "trial",
                "resumed_from", "seed", "k"}


@dataclass
class TrackConfig:
    """Experiment tracking of training curves (not part of any run's key)."""

    report_to: ReportTo = option("none", "also log training curves to tensorboard (event files in "
                                 "the run folder's tensorboard/) or wandb (offline in the run folder "
                                 "unless WANDB_MODE or WANDB_API_KEY is set; needs pip install wandb)")

    def __post_init__(self):
        if self.report_to not in REPORT_TO:
            raise ValueError(f"unknown tracker {self.report_to!r}; choose among {', '.join(REPORT_TO)}")


def _check_installed(report_to: str) -> None:
    needs = {"tensorboard": ("tensorboardX", "tensorboardX"), "wandb": ("wandb", "wandb")}[report_to]
    if importlib.util.find_spec(needs[0]) is None:
        raise ValueError(f"--report-to {report_to} needs the package {needs[1]}: pip install {needs[1]}")


def _start(run: Run, report_to: str) -> GeneralTracker:
    from accelerate.tracking import TensorBoardTracker, WandBTracker
    if report_to == "tensorboard":
        tracker = TensorBoardTracker(TENSORBOARD_DIR, run.path)
    else:
        if not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
            os.environ["WANDB_MODE"] = "offline"
        tracker = WandBTracker("floe", name=run.id, dir=str(run.path), config=run.config)
    tracker.start()
    return tracker


def record_metrics(record: dict) -> dict[str, float]:
    """The curves of a progress record, named ``stage/key`` (bookkeeping fields left out)."""
    stage = record.get("stage", "run")
    return {f"{stage}/{k}": v for k, v in record.items() if k not in _NOT_METRICS
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def record_step(record: dict) -> int | None:
    """The x of a progress record: its training step or trial number (None: not a curve point)."""
    return next((record[k] for k in ("step", "trial") if isinstance(record.get(k), int)), None)


@contextlib.contextmanager
def tracking(config: TrackConfig) -> Iterator[None]:
    """Forward the runs' progress records to ``config.report_to`` while inside."""
    if config.report_to == "none":
        yield
        return
    _check_installed(config.report_to)
    trackers: dict[Path, GeneralTracker] = {}

    def forward(run: Run, record: dict) -> None:
        metrics, step = record_metrics(record), record_step(record)
        if not metrics or step is None:
            return
        if run.path not in trackers:
            trackers[run.path] = _start(run, config.report_to)
        trackers[run.path].log(metrics, step=step)

    try:
        with log_listener(forward):
            yield
    finally:
        for tracker in trackers.values():
            tracker.finish()


def tracker_logs(run: Run) -> dict[str, str]:
    """Where a run's tracker logs are, with the command that shows them."""
    out = {}
    if (run.path / TENSORBOARD_DIR).is_dir():
        out["tensorboard"] = f"tensorboard --logdir {run.path / TENSORBOARD_DIR}"
    if (run.path / WANDB_DIR).is_dir():
        out["wandb"] = f"wandb sync {run.path / WANDB_DIR}/offline-run-*  (offline runs)"
    return out
