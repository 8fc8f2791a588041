"""floe eval: held-out loss / perplexity and log-likelihood multiple choice."""
import json
import math

import pytest
import torch

from floe.cli import main
from floe.models.load import load_model
from floe.pipeline import evaluate
from floe.pipeline.data import LEGAL_SUBJECTS, MEDICAL_SUBJECTS, _hf
from floe.pipeline.evaluate import EvalConfig, loglikelihoods, score_items, task_items


def _reference_loglikelihood(model, tok, context, continuation):
    """Plain unbatched forward over context + continuation."""
    ctx = tok(context)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, -1)[len(ctx) - 1:]
    return float(logprobs.gather(-1, torch.tensor(cont)[:, None]).sum())


def test_batched_scores_equal_one_at_a_time_forward_passes(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), "cpu")
    items = (task_items("arc-easy", limit=3) + task_items("winogrande", limit=3)
             + task_items("piqa", limit=2) + task_items("mmlu", shots=0, limit=2))
    requests = [r for item in items for r in item["requests"]]
    batched = loglikelihoods(model, tok, requests, batch_size=5)
    reference = [_reference_loglikelihood(model, tok, c, x) for c, x in requests]
    assert batched == pytest.approx(reference, abs=1e-3)
    # Different continuations get different scores (no mix-up of rows or positions).
    assert len({round(s, 4) for s in batched}) > len(batched) // 2


def test_accuracy_and_length_normalised_accuracy(monkeypatch):
    # First item: the long right answer has the lower total (-8 < -6) but the higher
    # per-byte log-likelihood (-8/27 > -6/3): acc misses it, acc_norm gets it.
    items = [{"requests": [("q", " a much longer right answer"), ("q", " no")], "gold": 0},
             {"requests": [("q", " yes"), ("q", " no")], "gold": 0}]
    fake = {" a much longer right answer": -8.0, " no": -6.0, " yes": -1.0}
    monkeypatch.setattr(evaluate, "loglikelihoods",
                        lambda model, tok, requests, *a, **k: [fake[c] for _, c in requests])
    result = score_items(None, None, items)
    assert result["correct"] == [0, 1] and result["acc"] == 0.5
    assert result["acc_norm"] == 1.0 and result["n"] == 2


def test_mmlu_prompts_are_k_shot_from_dev_and_answers_are_letters():
    items = task_items("mmlu", shots=5)
    assert len(items) == 14042  # the paper's MMLU test count
    context, continuation = items[0]["requests"][0]
    dev = list(_hf("hails/mmlu_no_train/abstract_algebra/dev"))
    assert context.startswith("The following are multiple choice questions (with answers) about "
                              "abstract algebra.")
    assert all(row["question"].strip() in context for row in dev)
    assert context.count("\nAnswer:") == 6 and context.endswith("Answer:")
    assert [c for _, c in items[0]["requests"]] == [" A", " B", " C", " D"]
    zero_shot = task_items("mmlu", shots=0)[0]["requests"][0][0]
    assert zero_shot.count("Answer:") == 1


@pytest.mark.parametrize("task, subjects", [("mmlu-medical", MEDICAL_SUBJECTS),
                                            ("mmlu-legal", LEGAL_SUBJECTS)])
def test_domain_groups_are_the_papers_subjects(task, subjects):
    expected = sum(len(_hf(f"hails/mmlu_no_train/{s}/test")) for s in subjects)
    assert len(task_items(task, shots=0)) == expected


def test_limit_is_a_seeded_sample_shared_by_every_model():
    full = task_items("hellaswag")
    sample = task_items("hellaswag", limit=20)
    assert len(sample) == 20 and sample == task_items("hellaswag", limit=20)
    assert all(item in full for item in sample) and sample != full[:20]
    assert all(0 <= it["gold"] < len(it["requests"]) for it in sample)


def test_eval_base_and_adapter_from_the_cli(tiny_args, trained_run, capsys):
    args = ["--tasks", "arc-easy,winogrande", "--limit", "4", "--quiet", "--json"]
    assert main(["eval", "--train-run", trained_run.id, *args]) == 0
    adapted = json.loads(capsys.readouterr().out)
    assert adapted["tasks"]["arc-easy"]["n"] == 4 and adapted["tasks"]["winogrande"]["n"] == 4
    assert adapted["perplexity"] == pytest.approx(math.exp(adapted["val_loss"]))
    # The adapter's held-out loss is the one its training measured on the same split.
    summary = trained_run.read_json("train.json")
    assert adapted["val_loss"] == pytest.approx(summary["val_loss_after"], rel=1e-5)

    data = [a for a in tiny_args if a != "--quiet"][:10]  # model, data and split options
    assert main(["eval", *data, *args]) == 0
    base = json.loads(capsys.readouterr().out)
    assert base["run"] != adapted["run"]
    assert base["val_loss"] == pytest.approx(summary["val_loss_before"], rel=1e-5)
    # An adapter folder gives the same numbers as its train run.
    assert main(["eval", "--model", tiny_args[1], "--adapter", str(trained_run.file("adapter")),
                 *args, "--no-val-loss"]) == 0
    folder = json.loads(capsys.readouterr().out)
    assert folder["arc-easy/acc"] == adapted["arc-easy/acc"]
    assert "val_loss" not in folder


def test_bad_eval_input(capsys):
    with pytest.raises(ValueError, match="unknown task"):
        EvalConfig(tasks=["mmlu", "nosuch"])
    assert main(["eval", "--tasks", "nosuch", "--quiet"]) == 2
    assert "unknown task" in capsys.readouterr().err
