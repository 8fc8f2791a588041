"""Warm-up: fine-tune a full-layer HydraLoRA model on a sample of the data (METHOD 1)."""
from __future__ import annotations

import dataclasses

from floe.adapters.hydralora import apply_hydralora, load_adapter, save_adapter, trainable_parameters
from floe.models.load import load_model
from floe.pipeline.data import load_split, tokenize
from floe.pipeline.setup import Setup
from floe.pipeline.train import train, validation_loss
from floe.store import artifacts
from floe.store.artifacts import WarmupJson
from floe.store.runs import Run, reuse_finished, run_for

__all__ = ["ADAPTER_DIR", "SUMMARY", "load_warmed_up", "run_warmup", "warmup_key", "warmup_run"]

ADAPTER_DIR = "adapter"
SUMMARY = artifacts.WARMUP



def warmup_key(setup: Setup) -> dict:
    """Everything that changes the warm-up's result (not the device)."""
    return setup.key("warmup")


def warmup_run(setup: Setup) -> Run:
    return run_for("warmup", warmup_key(setup))


def run_warmup(setup: Setup, force: bool = False, show_progress: bool = True) -> Run:
    """Warm up (or reuse a finished warm-up with the same config). Resumes a killed one."""
    setup = setup.replace(adapter=dataclasses.replace(setup.adapter, layers=None))  # every layer
    model_cfg, data, adapter, training = setup.model, setup.data, setup.adapter, setup.training
    run = warmup_run(setup)
    if reuse_finished(run, force):
        return run
    with run.hold():
        if force:
            import shutil
            shutil.rmtree(run.file("checkpoint"), ignore_errors=True)
        split = load_split(data)  # bad data fails before the model is loaded
        model, tok = load_model(model_cfg.model, model_cfg.device,
                                trust_remote_code=model_cfg.trust_remote_code,
                                device_map=model_cfg.device_map)
        rows, val = tokenize(tok, split.train, data.max_length), tokenize(tok, split.val, data.max_length)
        if len(rows) < training.batch_size:
            raise ValueError(f"the sample has {len(rows)} examples, fewer than the batch size "
                             f"{training.batch_size}: raise max_samples/ratio or lower batch_size")
        import torch
        torch.manual_seed(training.seed)
        apply_hydralora(model, adapter)
        run.log(event="stage", stage="warmup", message=f"{len(rows)} training examples, "
                f"{trainable_parameters(model):,} trainable parameters")
        val_before = validation_loss(model, val, tok.pad_token_id) if val else None
        summary = train(model, rows, training, tok.pad_token_id, run=run,
                        show_progress=show_progress, stage="warmup")
        val_after = validation_loss(model, val, tok.pad_token_id) if val else None
        save_adapter(model, adapter, run.file(ADAPTER_DIR))
        payload: WarmupJson = {**summary, "val_loss_before": val_before, "val_loss_after": val_after,
                                 "n_train": len(rows), "n_val": len(val),
                                 "trainable_parameters": trainable_parameters(model),
                                 "device": str(next(model.parameters()).device)}
        run.write_json(SUMMARY, payload)
        run.finish([SUMMARY, f"{ADAPTER_DIR}/adapter_model.safetensors"])
    return run


def load_warmed_up(run: Run, device: str = "auto", trust_remote_code: bool = False,
                   device_map: str | None = None):
    """The base model with the run's adapter (warm-up or sparse) attached, and its tokenizer."""
    run.verify()
    model, tok = load_model(run.config["model"]["model"], device, trust_remote_code=trust_remote_code,
                            device_map=device_map)
    load_adapter(model, run.file(ADAPTER_DIR))  # eval mode, as load_model returns it
    return model, tok
