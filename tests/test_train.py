import pytest
import torch
from helpers import tiny_model

from floe.adapters.hydralora import HydraLoraConfig, adapter_state_dict, apply_hydralora
from floe.pipeline.train import TrainConfig, total_steps, train, validation_loss
from floe.store.runs import run_for


def _rows(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):  # a learnable pattern: a random prompt, then a fixed response
        prompt = torch.randint(3, 96, (6,), generator=g).tolist()
        response = [7, 8, 9, 10, 11, 12]
        rows.append({"input_ids": prompt + response, "labels": [-100] * 6 + response})
    return rows


def _adapted(seed=0, dropout=0.0):
    model = tiny_model(seed=seed)
    torch.manual_seed(seed)
    apply_hydralora(model, HydraLoraConfig(r=4, dropout=dropout, targets=["q", "v", "up", "down"]))
    return model


def test_training_lowers_the_loss():
    model, rows = _adapted(), _rows()
    before = validation_loss(model, rows, pad_id=0)
    summary = train(model, rows, TrainConfig(lr=1e-2, epochs=4, batch_size=8, warmup_ratio=0.0),
                    pad_id=0, show_progress=False)
    assert summary["steps"] == summary["total_steps"] == 16
    assert validation_loss(model, rows, pad_id=0) < before - 0.3


def test_grad_accumulation_counts_optimizer_steps():
    cfg = TrainConfig(batch_size=4, grad_accum=2, epochs=1)
    assert total_steps(32, cfg) == 4
    summary = train(_adapted(), _rows(), cfg, pad_id=0, show_progress=False)
    assert summary["steps"] == 4 and len(summary["losses"]) == 4


@pytest.mark.parametrize("dropout", [0.0, 0.3])  # dropout: the RNG state is restored too
def test_killed_training_resumes_to_the_same_weights(tmp_path, monkeypatch, dropout):
    cfg = TrainConfig(lr=5e-3, epochs=2, batch_size=8, checkpoint_every=2, warmup_ratio=0.0)
    reference = _adapted(dropout=dropout)
    train(reference, _rows(), cfg, pad_id=0, show_progress=False)

    run = run_for("test", {"case": "resume", "dir": str(tmp_path)})
    original_log = type(run).log

    def dying_log(self, **record):
        if record.get("step") == 5:  # after the step-4 checkpoint, before the end
            raise KeyboardInterrupt
        original_log(self, **record)

    monkeypatch.setattr(type(run), "log", dying_log)
    with pytest.raises(KeyboardInterrupt):
        train(_adapted(dropout=dropout), _rows(), cfg, pad_id=0, run=run, show_progress=False)
    monkeypatch.setattr(type(run), "log", original_log)

    resumed = _adapted(dropout=dropout)
    summary = train(resumed, _rows(), cfg, pad_id=0, run=run, show_progress=False)
    assert summary["resumed_from"] == 4 and summary["steps"] == 8
    ours, ref = adapter_state_dict(resumed), adapter_state_dict(reference)
    assert all(torch.allclose(ours[k], ref[k], atol=1e-6) for k in ref)
    steps = [r["step"] for r in run.progress() if r.get("event") == "step"]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("kill_at", [3, 6])  # mid-epoch (the loader's seed), and after a boundary
def test_a_resumed_run_equals_an_uninterrupted_one_exactly(tmp_path, monkeypatch, kill_at):
    """Same losses bit for bit, same adapter bytes, and the summary keeps every step's loss."""
    cfg = TrainConfig(lr=5e-3, epochs=2, batch_size=8, checkpoint_every=1, warmup_ratio=0.0)
    reference = _adapted(dropout=0.3)
    expected = train(reference, _rows(), cfg, pad_id=0, show_progress=False)

    run = run_for("test", {"case": "exact-resume", "dir": str(tmp_path), "kill": kill_at})
    original_log = type(run).log

    def dying_log(self, **record):
        if record.get("step") == kill_at:
            raise KeyboardInterrupt
        original_log(self, **record)

    monkeypatch.setattr(type(run), "log", dying_log)
    with pytest.raises(KeyboardInterrupt):
        train(_adapted(dropout=0.3), _rows(), cfg, pad_id=0, run=run, show_progress=False)
    monkeypatch.setattr(type(run), "log", original_log)
    resumed = _adapted(dropout=0.3)
    summary = train(resumed, _rows(), cfg, pad_id=0, run=run, show_progress=False)
    assert summary["resumed_from"] == kill_at - 1
    assert summary["losses"] == expected["losses"]  # exact, and the steps before the resume too
    ours, ref = adapter_state_dict(resumed), adapter_state_dict(reference)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def test_progress_log_has_the_fields_the_app_reads(tmp_path):
    run = run_for("test", {"case": "log", "dir": str(tmp_path)})
    train(_adapted(), _rows(16), TrainConfig(batch_size=8), pad_id=0, run=run, show_progress=False)
    step = [r for r in run.progress() if r.get("event") == "step"][-1]
    assert {"step", "total_steps", "loss", "lr", "tokens_per_s", "elapsed", "eta"} <= set(step)
    assert step["step"] == step["total_steps"] == 2 and step["eta"] == pytest.approx(0, abs=1e-6)


def test_bad_train_config():
    with pytest.raises(ValueError):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        TrainConfig(warmup_ratio=1.0)
    for bad in ({"max_steps": -1}, {"checkpoint_every": -1}, {"seed": -1}):
        with pytest.raises(ValueError, match=">= 0|seed must be"):
            TrainConfig(**bad)
    frozen = tiny_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        train(frozen, _rows(8), TrainConfig(), pad_id=0, show_progress=False)
