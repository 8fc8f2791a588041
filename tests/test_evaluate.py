"""floe eval: held-out loss / perplexity, and multiple choice through lm-eval checked against
the definition item by item."""
import dataclasses
import json
import math

import pytest
import torch

from floe.cli import main
from floe.eval.evaluate import EvalConfig
from floe.eval.lmeval import lm_eval_results
from floe.models.load import load_model
from floe.pipeline.data import LEGAL_SUBJECTS, MEDICAL_SUBJECTS, embedded_dataset


def reference_loglikelihood(model, tok, context, continuation):
    """The definition (what floe's hand-written scorer computed before lm-eval): one
    unbatched forward pass over context + continuation, context and continuation tokenised
    apart, summed log p of the continuation tokens; too long a sequence loses its start."""
    ctx = tok(context)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    seq = (ctx + cont)[-(model.config.max_position_embeddings + 1):]  # cut from the left
    with torch.no_grad():
        logits = model(torch.tensor([seq[:-1]])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)[-len(cont):]
    return float(logprobs.gather(-1, torch.tensor(cont)[:, None]).sum())


def _mmlu_question(r) -> str:
    choices = "".join(f"\n{'ABCD'[i]}. {c}" for i, c in enumerate(r["choices"]))
    return r["question"].strip() + choices + "\nAnswer:"


def reference_requests(task: str, limit: int, shots: int = 0) -> list[tuple[list[tuple[str, str]], int]]:
    """The (context, continuation) pairs and gold index of each sampled item, written out
    from the benchmark rows by hand (lm-eval's prompts, as floe's old scorer built them)."""
    from floe.eval.lmeval import sample_indices
    if task == "arc-easy":
        rows = [r for r in embedded_dataset("ai2_arc/ARC-Easy/validation") if r["answerKey"] in r["choices"]["label"]]
        items = [([(f"Question: {r['question']}\nAnswer:", f" {t}") for t in r["choices"]["text"]],
                  r["choices"]["label"].index(r["answerKey"])) for r in rows]
    elif task == "winogrande":
        items = []
        for r in embedded_dataset("winogrande/winogrande_xl/validation"):
            before, after = r["sentence"].split("_", 1)
            items.append(([(before + o, " " + after.strip()) for o in (r["option1"], r["option2"])],
                          int(r["answer"]) - 1))
    elif task == "mmlu-legal":
        items = []
        for subject in LEGAL_SUBJECTS:
            dev = list(embedded_dataset(f"hails/mmlu_no_train/{subject}/dev"))[:shots]
            head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
            prefix = head + "".join(f"{_mmlu_question(r)} {'ABCD'[r['answer']]}\n\n" for r in dev)
            items += [([(prefix + _mmlu_question(r), f" {x}") for x in "ABCD"], r["answer"])
                      for r in embedded_dataset(f"hails/mmlu_no_train/{subject}/test")]
    return [items[i] for i in sample_indices(len(items), limit)]


@pytest.mark.parametrize("task, limit, shots", [("arc-easy", 50, 0), ("winogrande", 50, 0), ("mmlu-legal", 6, 2)])
def test_lm_eval_agrees_item_by_item_with_the_definition(tiny_model_dir, task, limit, shots):
    """Parity: lm-eval's per-choice log-likelihoods and decisions equal a plain unbatched
    forward pass on the same prompts (the old scorer's definition), item by item."""
    model, tok = load_model(str(tiny_model_dir), "cpu")
    got = lm_eval_results(model, tok, [task], shots=shots, limit=limit, batch_size=7)[task]
    items = reference_requests(task, limit, shots)
    want = [[reference_loglikelihood(model, tok, c, x) for c, x in requests] for requests, _ in items]
    assert got["n"] == len(items) == limit
    for ours, theirs in zip(got["loglikelihoods"], want):
        assert ours == pytest.approx(theirs, abs=1e-3)
    correct = [int(max(range(len(ll)), key=ll.__getitem__) == gold) for ll, (_, gold) in zip(want, items)]
    if task == "mmlu-legal":  # long k-shot prompts: some are cut to the tiny model's 512 positions
        assert any(len(tok(c)["input_ids"]) > 512 for requests, _ in items for c, _ in requests)
    assert got["correct"] == correct and got["acc"] == pytest.approx(sum(correct) / limit)
    p = got["acc"]
    assert got["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (limit - 1)))
    assert len({round(x, 4) for ll in want for x in ll}) > limit  # scores differ: no mix-up


def test_acc_norm_divides_by_the_characters_of_the_choice(tiny_model_dir, capfd):
    model, tok = load_model(str(tiny_model_dir), "cpu")
    capfd.readouterr()
    got = lm_eval_results(model, tok, ["arc-easy"], limit=20)["arc-easy"]
    assert "it/s]" not in capfd.readouterr().err  # no progress bar drawn without show_progress
    items = reference_requests("arc-easy", 20)
    # lm-eval's acc_norm: per character of the choice (without the space before it)
    norm = [int(max(range(len(ll)), key=lambda i: ll[i] / len(req[i][1][1:])) == gold)
            for ll, (req, gold) in zip(got["loglikelihoods"], items)]
    assert got["acc_norm"] == pytest.approx(sum(norm) / 20)


@pytest.mark.parametrize("task, subjects", [("mmlu-medical", MEDICAL_SUBJECTS),
                                            ("mmlu-legal", LEGAL_SUBJECTS), ("mmlu", None)])
def test_mmlu_tasks_are_the_papers_subjects(task, subjects):
    from floe.eval.lmeval import task_configs
    configs = task_configs(task, shots=5)
    names = [c["task"].removeprefix("floe_mmlu_") for c in configs]
    if subjects is not None:
        assert names == list(subjects)
    assert len(names) == (len(subjects) if subjects else 57)
    assert all(c["num_fewshot"] == 5 and c["fewshot_split"] == "dev" for c in configs)


def test_limit_is_a_seeded_sample_shared_by_every_model():
    from floe.eval.lmeval import sample_indices
    sample = sample_indices(10042, 20)
    assert len(sample) == 20 and sample == sample_indices(10042, 20) == sorted(sample)
    assert sample != list(range(20)) and sample_indices(5, 0) == sample_indices(5, 9) == list(range(5))


def test_eval_base_and_adapter_from_the_cli(tiny_args, trained_run, capsys):
    args = ["--tasks", "arc-easy,winogrande", "--limit", "4", "--quiet", "--json"]
    assert main(["eval", "--train-run", trained_run.id, *args]) == 0
    adapted = json.loads(capsys.readouterr().out)
    assert adapted["tasks"]["arc-easy"]["n"] == 4 and adapted["tasks"]["winogrande"]["n"] == 4
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= set(adapted["tasks"]["arc-easy"])
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
    # No benchmark at all: the held-out loss alone (what a quick compare needs).
    assert main(["eval", "--train-run", trained_run.id, "--tasks", "", "--quiet", "--json"]) == 0
    loss_only = json.loads(capsys.readouterr().out)
    assert loss_only["tasks"] == {} and loss_only["val_loss"] == pytest.approx(adapted["val_loss"])


def test_bad_eval_input(capsys):
    with pytest.raises(ValueError, match="unknown task"):
        EvalConfig(tasks=["mmlu", "nosuch"])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        EvalConfig(tasks=[], val_loss=False)
    assert main(["eval", "--tasks", "nosuch", "--quiet"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_an_adapters_evaluation_takes_its_trainings_final_loss(trained_run, monkeypatch):
    """The training measured the held-out loss of the weights it saved (fp32, exactly), on the
    rows and device the evaluation uses: the evaluation takes that number, the same bits as
    measuring again, and loads no model when no benchmark is asked."""
    from floe.eval import evaluate
    from floe.pipeline.data import data_config, load_split, tokenize
    from floe.pipeline.sparse import load_trained
    from floe.pipeline.train import validation_loss
    final = trained_run.read_json("train.json")["val_loss_after"]
    net, tok = load_trained(trained_run, device="cpu")
    data = data_config(trained_run.config["data"])
    assert validation_loss(net, tokenize(tok, load_split(data).val, data.max_length), tok.pad_token_id) == final

    def no_load(*args, **kwargs):
        raise AssertionError("a held-out loss the training measured needs no model")
    monkeypatch.setattr(evaluate, "load_model", no_load)
    run = evaluate.run_evaluation(None, evaluate.EvalConfig(tasks=[]), train_run=trained_run.id, device="cpu",
                                  force=True, show_progress=False)
    assert run.read_json("eval.json")["val_loss"] == final
    # Judged on other rows, it is measured again (here: the model is loaded).
    other = dataclasses.replace(data, seed=data.seed + 1)
    with pytest.raises(AssertionError, match="needs no model"):
        evaluate.run_evaluation(None, evaluate.EvalConfig(tasks=[]), data=other, train_run=trained_run.id,
                                device="cpu", force=True, show_progress=False)
