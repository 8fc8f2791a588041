"""--report-to: training curves in TensorBoard event files in the run folder (read back
record by record here), wandb refused with the install line when it is missing."""
from __future__ import annotations

import importlib.util
import json
import struct

import pytest

from floe.cli import main
from floe.pipeline.trackers import TENSORBOARD_DIR, TrackConfig, tracker_logs, tracking
from floe.store.runs import open_run, run_for


def scalars(folder) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from TensorBoard event files (TFRecord framing: length, crc,
    payload, crc), parsed with tensorboardX's own protobuf."""
    from tensorboardX.proto.event_pb2 import Event
    out: dict[str, dict[int, float]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_train_logs_its_curves_to_tensorboard_in_the_run_folder(tiny_args, score_run, capsys):
    args = ["train", *tiny_args, "--score-run", score_run, "--k", "1", "--max-steps", "3",
            "--report-to", "tensorboard", "--json"]
    assert main(args) == 0
    run = open_run(json.loads(capsys.readouterr().out)["run"])
    logged = scalars(run.file(TENSORBOARD_DIR))
    steps = [r for r in run.progress() if r.get("event") == "step"]
    assert len(steps) == 3
    for tag, field in (("train/loss", "loss"), ("train/lr", "lr"), ("train/tokens_per_s", "tokens_per_s")):
        assert logged[tag] == pytest.approx({r["step"]: r[field] for r in steps}, rel=1e-6)
    assert "tensorboard --logdir" in tracker_logs(run)["tensorboard"]
    # The option is not part of the run's key: without it, the same run is found, finished.
    assert main([a for a in args if a not in ("--report-to", "tensorboard")]) == 0
    assert json.loads(capsys.readouterr().out)["run"] == run.id


def test_none_forwards_nothing(tmp_path):
    run = run_for("test", {"tracking": "none"})
    with tracking(TrackConfig("none")):
        run.log(event="step", stage="train", step=1, loss=1.0)
    assert not (run.path / TENSORBOARD_DIR).exists() and tracker_logs(run) == {}


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_the_package_is_one_clear_line(tiny_args, score_run, capsys):
    assert main(["train", *tiny_args, "--score-run", score_run, "--k", "1", "--report-to", "wandb"]) == 2
    assert "pip install wandb" in capsys.readouterr().err


def test_trial_records_become_curves_over_trials_and_bookkeeping_does_not():
    from floe.pipeline.trackers import record_metrics, record_step
    trial = {"event": "progress", "stage": "search", "done": 3, "total": 8, "trial": 2,
             "state": "COMPLETE", "r": 6, "value": 1.25, "time": 1.0}
    assert record_metrics(trial) == {"search/r": 6, "search/value": 1.25} and record_step(trial) == 2
    pruned = {**trial, "state": "PRUNED", "value": None}
    assert record_metrics(pruned) == {"search/r": 6}
    scoring = {"event": "progress", "stage": "fisher", "done": 2, "total": 4}
    assert record_metrics(scoring) == {} and record_step(scoring) is None
