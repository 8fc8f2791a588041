"""floe export: config.yaml for floe train --config, a peft LoraConfig, the adapter."""
import json

import pytest
import torch
import yaml
from helpers import RANKINGS, tiny_config

from floe.adapters.hydralora import load_adapter
from floe.cli import main
from floe.models.load import load_model
from floe.pipeline.export import MARKER, export, target_modules_regex
from floe.pipeline.sparse import load_trained
from floe.store.runs import open_run


def _logits(model):
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        return model(ids).logits


def test_export_loads_back_to_the_same_outputs(trained_run, tiny_model_dir, tmp_path, capsys):
    target = tmp_path / "exported"
    assert main(["export", "--train-run", trained_run.id, "--to", str(target), "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert {"config.yaml", "README.md", MARKER, "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json", "peft/adapter_config.json"} <= set(files)

    trained, _ = load_trained(trained_run, device="cpu")
    model, _ = load_model(str(tiny_model_dir), "cpu")
    load_adapter(model, target / "adapter")
    model.eval()  # the new adapter modules start in training mode (dropout on)
    assert torch.equal(_logits(model), _logits(trained))
    base, _ = load_model(str(tiny_model_dir), "cpu")
    assert not torch.allclose(_logits(base), _logits(trained))  # the adapter does something
    assert "load_adapter" in (target / "README.md").read_text()


def test_config_records_everything_to_reproduce(trained_run, tmp_path, score_run):
    target = export(trained_run.id, tmp_path / "e")
    config = yaml.safe_load((target / "config.yaml").read_text())
    assert config["layers"] == sorted(RANKINGS["floe"][:2])
    assert config["adapter"]["r"] == 4 and config["adapter"]["experts"] == 4
    assert config["adapter"]["targets"] == ["gate", "up", "down"]
    assert config["data"]["ratio"] == 1.0 and config["train"]["seed"] == trained_run.config["train"]["seed"]
    prov = config["provenance"]
    assert prov["model_fingerprint"] == trained_run.config["model"]
    assert prov["selection"]["policy"] == "floe" and prov["scores"]["score_run"] == score_run
    assert prov["scores"]["ranking"] == RANKINGS["floe"]


def test_train_config_reproduces_the_adapter(trained_run, tmp_path, capsys):
    target = export(trained_run.id, tmp_path / "e")
    assert main(["train", "--config", str(target / "config.yaml"), "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    again = open_run(out["run"])
    assert out["layers"] == trained_run.read_json("train.json")["layers"]
    assert again.config["adapter"] == trained_run.config["adapter"]
    assert again.config["train"] == trained_run.config["train"]
    same, _ = load_trained(again, device="cpu")
    original, _ = load_trained(trained_run, device="cpu")
    assert torch.allclose(_logits(same), _logits(original), atol=1e-6)


def test_peft_config_targets_exactly_the_adapted_modules(trained_run, tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from floe.adapters.hydralora import HydraLoraLinear
    target = export(trained_run.id, tmp_path / "e")
    peft_model = get_peft_model(load_model(str(tiny_model_dir), "cpu")[0],
                                LoraConfig.from_pretrained(str(target / "peft")))
    lora = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules()
            if hasattr(m, "lora_A") and not isinstance(m, torch.nn.ModuleDict)}
    hydra, _ = load_trained(trained_run, device="cpu")
    adapted = {n for n, m in hydra.named_modules() if isinstance(m, HydraLoraLinear)}
    assert lora == adapted and len(lora) == 2 * 3


def test_regex_does_not_match_other_layers_with_shared_prefixes():
    import re
    config = tiny_config(num_hidden_layers=12)
    pattern = target_modules_regex(config, [1], ["down"])
    assert re.fullmatch(pattern, "model.layers.1.mlp.down_proj")
    assert not re.fullmatch(pattern, "model.layers.11.mlp.down_proj")
    assert not re.fullmatch(pattern, "model.layers.1.mlp.up_proj")


def test_existing_target_is_not_overwritten_without_force(trained_run, tmp_path, capsys):
    target = export(trained_run.id, tmp_path / "e")
    (target / "README.md").write_text("edited")
    code = main(["export", "--train-run", trained_run.id, "--to", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already exists" in err and len(err.splitlines()) == 1
    assert (target / "README.md").read_text() == "edited"
    export(trained_run.id, target, force=True)
    assert (target / "README.md").read_text() != "edited"
    # A folder that is not an export is never replaced, even with force.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a floe export"):
        export(trained_run.id, other, force=True)
    assert (other / "notes.txt").read_text() == "keep me"



def test_unwritable_target_is_a_one_line_error(trained_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["export", "--train-run", trained_run.id, "--to", str(blocker / "e")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Not a directory" in err and len(err.splitlines()) == 1
    assert blocker.read_text() == "not a folder"
