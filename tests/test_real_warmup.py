"""Warm-up on the REAL embedded SmolLM2-135M-Instruct and real embedded data."""
import json

import pytest

from floe.adapters.hydralora import HydraLoraConfig
from floe.cli import main
from floe.pipeline.data import DataConfig
from floe.pipeline.setup import ModelConfig, Setup
from floe.pipeline.train import TrainConfig
from floe.pipeline.warmup import load_warmed_up, run_warmup

pytestmark = pytest.mark.real


def test_real_warmup_lowers_the_loss_and_is_cached(capsys):
    data = DataConfig(max_samples=16, val_samples=8, max_length=96)
    run = run_warmup(Setup(ModelConfig(device="cpu"), data, HydraLoraConfig(),
                           TrainConfig(lr=1e-3, epochs=2, batch_size=4)), show_progress=False)
    summary = run.read_json("warmup.json")
    assert summary["steps"] == 8 and summary["n_train"] == 16
    # Training loss over the two epochs falls, and so does the held-out loss.
    assert sum(summary["losses"][4:]) < sum(summary["losses"][:4])
    assert summary["val_loss_after"] < summary["val_loss_before"]
    assert run.config["model"]["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"

    model, _ = load_warmed_up(run, device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and len(model.model.layers) == 30

    # The same config from the CLI reuses the finished run instead of training again.
    code = main(["warmup", "--device", "cpu", "--max-samples", "16", "--val-samples", "8",
                 "--max-length", "96", "--lr", "1e-3", "--epochs", "2", "--batch-size", "4",
                 "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["run"] == run.id and out["losses"] == summary["losses"]
