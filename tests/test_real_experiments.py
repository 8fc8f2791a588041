"""search-rank -> train -> eval -> export on the REAL SmolLM2-135M-Instruct and real data."""
import json

import pytest
import torch

from floe.adapters.hydralora import load_adapter
from floe.cli import main
from floe.models.load import load_model
from floe.pipeline.data import data_config, load_split, tokenize
from floe.pipeline.sparse import load_trained
from floe.pipeline.train import validation_loss
from floe.store.runs import open_run

pytestmark = pytest.mark.real

DATA = ["--device", "cpu", "--data", "general", "--max-samples", "16", "--val-samples", "8",
        "--max-length", "64", "--batch-size", "8", "--lr", "1e-3", "--layers", "20,24,28"]


def test_search_train_eval_export_on_smollm2(smol_path, tmp_path, capsys):
    assert main(["search-rank", *DATA, "--n-trials", "2", "--r-min", "2", "--r-max", "16",
                 "--quiet", "--json"]) == 0
    search = json.loads(capsys.readouterr().out)
    assert search["n_finished"] == 2 and 2 <= search["best_r"] <= 16
    assert all(t["layers"] == [20, 24, 28] for t in search["trials"])

    assert main(["train", *DATA, "--r", str(search["best_r"]), "--epochs", "2", "--quiet",
                 "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["layers"] == [20, 24, 28] and trained["r"] == search["best_r"]
    assert trained["val_loss_after"] < trained["val_loss_before"]

    assert main(["eval", "--train-run", trained["run"], "--device", "cpu", "--tasks",
                 "arc-easy,mmlu", "--limit", "8", "--quiet", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["tasks"]["mmlu"]["n"] == 8 and evaluated["tasks"]["arc-easy"]["n"] == 8
    assert 0 <= evaluated["mmlu/acc"] <= 1

    target = tmp_path / "export"
    assert main(["export", "--train-run", trained["run"], "--to", str(target), "--quiet"]) == 0
    capsys.readouterr()
    reference, tok = load_trained(open_run(trained["run"]), device="cpu")
    model, _ = load_model("smollm2-135m", "cpu")
    # The eval took the training's own final held-out loss and the training took the base
    # model's loss as its loss before: measured again here, the same bits.
    data = data_config(open_run(trained["run"]).config["data"])
    val = tokenize(tok, load_split(data).val, data.max_length)
    assert validation_loss(reference, val, tok.pad_token_id) == evaluated["val_loss"] == trained["val_loss_after"]
    assert validation_loss(model, val, tok.pad_token_id) == trained["val_loss_before"]
    load_adapter(model, target / "adapter")
    model.eval()
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
