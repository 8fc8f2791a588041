"""floe eval through lm-eval on the REAL SmolLM2-135M-Instruct (ARC-Easy)."""
from __future__ import annotations

import json

import pytest
from test_evaluate import reference_loglikelihood, reference_requests

from floe.cli import main
from floe.store.runs import open_run


@pytest.mark.real
def test_arc_easy_on_smollm2_through_lm_eval(smol_path, smol_tokenizer, capsys):
    assert main(["eval", "--model", "smollm2-135m", "--tasks", "arc-easy", "--limit", "40",
                 "--no-val-loss", "--device", "cpu", "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    result = out["tasks"]["arc-easy"]
    assert result["n"] == 40
    assert out["arc-easy/acc"] > 0.25 + 2 * result["acc_stderr"]  # above chance (4 choices)
    saved = open_run(out["run"]).read_json("eval.json")
    assert saved["scorer"].startswith("lm-eval 0.4.")
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(smol_path).eval()
    items = reference_requests("arc-easy", 40)[:3]  # the same sampled items, item by item
    for (requests, _), got in zip(items, saved["tasks"]["arc-easy"]["loglikelihoods"]):
        want = [reference_loglikelihood(model, smol_tokenizer, c, x) for c, x in requests]
        assert got == pytest.approx(want, abs=1e-3)
