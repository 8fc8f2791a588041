"""Export a trained sparse adapter: everything needed to use or reproduce it.

An export folder holds
- ``config.yaml``: model, data, adapter, training and the explicit layer list, which
  ``floe train --config`` accepts, plus provenance (model fingerprint, selection, scores);
- ``adapter/``: the HydraLoRA weights (safetensors) and config, for ``load_adapter``;
- ``peft/adapter_config.json``: a peft ``LoraConfig`` whose ``target_modules`` regex names
  exactly the adapted modules, for users of plain LoRA;
- ``README.md``: how to load it; ``floe_export.json``: what it came from.

The folder is built under a new temp name beside the target and renamed into place, so a
killed export leaves no half folder, and ``--force`` replaces an old export only once the
new one is complete (nothing else is ever deleted).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml

from floe import __version__
from floe.adapters.hydralora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HydraLoraConfig
from floe.models import arch
from floe.pipeline.sparse import ADAPTER_DIR, layer_scores, summary_of
from floe.store.runs import Run, atomic_write_bytes, atomic_write_json, open_run

__all__ = ["CONFIG_FILE", "MARKER", "TRAIN_SECTIONS", "export", "lora_config", "prepare_target",
           "read_config", "reproduction_config", "target_modules_regex"]

MARKER = "floe_export.json"
CONFIG_FILE = "config.yaml"
TRAIN_SECTIONS = ("model", "data", "adapter", "train")


def target_modules_regex(model_config, layers: list[int], targets: list[str]) -> str:
    """A regex (peft fullmatches it) naming exactly the adapted modules, nothing else."""
    names = dict.fromkeys(arch.module_name(model_config, k, role)  # fused roles: one module
                          for k in sorted(layers) for role in targets)
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def lora_config(model_config, adapter: HydraLoraConfig, base_model: str):
    from peft import LoraConfig
    assert adapter.layers is not None, "a trained adapter has its layers"
    # peft annotates lora_alpha as int but only divides by it (alpha / r): a float alpha is kept exact
    return LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,  # type: ignore[arg-type]
                      target_modules=target_modules_regex(model_config, adapter.layers, adapter.targets),
                      task_type="CAUSAL_LM", base_model_name_or_path=base_model)


def reproduction_config(run: Run) -> dict:
    """The YAML payload: what ``floe train --config`` reads, then provenance."""
    config, summary = run.config, summary_of(run)
    adapter = {k: v for k, v in config["adapter"].items() if k != "layers"}
    selection = config.get("selection", {})
    provenance = {"floe": __version__, "train_run": run.id, "model_fingerprint": config["model"],
                  "selection": selection, "val_loss_after": summary.get("val_loss_after"),
                  "trainable_parameters": summary.get("trainable_parameters")}
    if selection.get("score_run"):
        try:
            provenance["scores"] = layer_scores(open_run(selection["score_run"]))
        except FileNotFoundError:  # the score run was deleted: export without its scores
            provenance["scores"] = None
    return {"model": {"model": config["model"]["model"]}, "data": config["data"], "adapter": adapter,
            "train": config["train"], "layers": summary["layers"], "provenance": provenance}


def _readme(payload: dict, regex: str) -> str:
    model, layers, adapter = payload["model"]["model"], payload["layers"], payload["adapter"]
    return f"""# FLoE sparse HydraLoRA adapter

Model `{model}`, layers {layers}, rank {adapter['r']}, {adapter['experts']} experts,
targets {', '.join(adapter['targets'])} (from run `{payload['provenance']['train_run']}`).

## Load the adapter (HydraLoRA, with floe)

```python
from floe.pipeline.generate import load_adapted
model, tokenizer = load_adapted("path/to/this/folder")   # ready for model.generate(...)
```

or onto a model loaded your own way:

```python
from floe.models.load import load_model
from floe.adapters.hydralora import load_adapter

model, tokenizer = load_model("{model}")
load_adapter(model, "adapter")          # this folder's adapter/
```

## Train it again

```bash
floe train --config config.yaml
```

## Plain LoRA on the same layers (peft)

(On fused projections, e.g. Phi-3's `qkv_proj` and `gate_up_proj`, peft adapts the whole
fused module, where the HydraLoRA adapter updates only the targeted roles' rows.)

```python
from peft import LoraConfig, get_peft_model
config = LoraConfig.from_pretrained("peft")   # target_modules: {regex[:60]}...
model = get_peft_model(model, config)
```
"""


def prepare_target(target: Path, force: bool) -> None:
    """Refuse to overwrite anything without force, and anything but an export even with it
    (nothing is deleted here: the old export is swapped out once the new one is built)."""
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise FileExistsError(f"export target {target} already exists; use --force to replace it")
    if target.is_dir() and not target.is_symlink() and ((target / MARKER).is_file() or not any(target.iterdir())):
        return
    raise FileExistsError(f"export target {target} exists and is not a floe export; "
                          "refusing to replace it even with --force")


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the finished ``tmp`` at ``target``; an old export there is moved aside first and
    deleted only once the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        target.rename(old / target.name)
    try:
        tmp.rename(target)
    except BaseException:
        if old is not None:
            (old / target.name).rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(train_run: str, target: str | Path, force: bool = False) -> Path:
    """Write the export folder of a finished train run; returns its path."""
    run = open_run(train_run)
    run.verify()
    target = Path(target).expanduser().resolve()
    prepare_target(target, force)
    payload = reproduction_config(run)
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
    # Our own, new temp folder: a sibling of the same name belongs to someone else.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; an export is as any new folder
    try:
        _build(run, payload, tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _build(run: Run, payload: dict, tmp: Path) -> None:
    from transformers import AutoConfig

    from floe.models.load import resolve_model_path
    (tmp / "adapter").mkdir(parents=True)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        shutil.copy2(run.file(ADAPTER_DIR) / name, tmp / "adapter" / name)
    model = payload["model"]["model"]
    adapter = HydraLoraConfig(**{**payload["adapter"], "layers": payload["layers"]})
    model_config = AutoConfig.from_pretrained(resolve_model_path(model))
    peft_config = lora_config(model_config, adapter, model)
    peft_config.save_pretrained(str(tmp / "peft"))
    atomic_write_bytes(tmp / CONFIG_FILE, yaml.safe_dump(payload, sort_keys=False).encode())
    atomic_write_bytes(tmp / "README.md", _readme(payload, peft_config.target_modules).encode())
    atomic_write_json(tmp / MARKER, {"train_run": run.id, "layers": payload["layers"],
                                     "floe": __version__})


def read_config(path: str | Path) -> dict:
    """A config.yaml as {section: values}, checked enough to give clear errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        payload = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(payload, dict) or not set(TRAIN_SECTIONS) & set(payload):
        raise ValueError(f"{path}: expected sections {', '.join(TRAIN_SECTIONS)} (as written by floe export)")
    fingerprint = (payload.get("provenance") or {}).get("model_fingerprint") or {}
    if "gguf_sha256_16" in fingerprint:  # embedded models: the same weights or an error
        from floe.models.load import model_fingerprint
        now = model_fingerprint(fingerprint["model"])
        if now.get("gguf_sha256_16") != fingerprint["gguf_sha256_16"]:
            raise ValueError(f"{path}: model {fingerprint['model']} here has other weights "
                             f"({now.get('gguf_sha256_16')}) than when exported "
                             f"({fingerprint['gguf_sha256_16']})")
    return payload
