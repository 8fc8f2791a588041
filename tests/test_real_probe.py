"""A 2-layer probe on the REAL SmolLM2-135M-Instruct, checked against a real (small) analysis."""
import json

import pytest

from floe.cli import main

# One test worker for both: the probe reuses the analysis the score test computed (same cache).
pytestmark = [pytest.mark.real, pytest.mark.xdist_group("real-analysis")]

SMALL = ["--device", "cpu", "--max-samples", "16", "--val-samples", "4", "--max-length", "64",
         "--batch-size", "8", "--quiet", "--json"]


def test_two_layer_probe_on_smollm2(capsys):
    # The same small analysis as test_real_score (reused when both run in one session).
    assert main(["analyze", *SMALL, "--score-samples", "8", "--score-batch-size", "8"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert main(["probe", "--score-run", score["run"], "--layers", "2,28", *SMALL,
                 "--val-samples", "8", "--lr", "1e-3"]) == 0
    out = json.loads(capsys.readouterr().out)
    print("real probe:", json.dumps({k: out[k] for k in ("layers", "gain", "gain_ci", "base_val_loss",
                                                         "cell_seconds")}))
    print("agreement:", json.dumps({p: {k: f[k] for k in ("spearman", "precision_at_k")}
                                    for p, f in out["agreement"].items()}))
    assert out["layers"] == [2, 28] and out["model"] == "smollm2-135m" and out["data"] == "general"
    assert all(g is not None and abs(g) < out["base_val_loss"] for g in out["gain"])
    assert out["gain"][0] != out["gain"][1]
    # Two layers: every ranking orders them one way or the other, so rho is +-1, and the
    # deepest and shallowest policies disagree exactly.
    agreement = out["agreement"]
    assert {"floe", "deepest", "shallowest", "lora-drop", "ht-sr", "floe-reverse"} <= set(agreement)
    assert {abs(f["spearman"]) for f in agreement.values()} == {1.0}
    assert agreement["deepest"]["spearman"] == -agreement["shallowest"]["spearman"]
    assert agreement["floe"]["spearman"] == -agreement["floe-reverse"]["spearman"]
    deeper_wins = out["gain"][1] > out["gain"][0]
    assert agreement["deepest"]["precision_at_k"] == ([1.0, 1.0] if deeper_wins else [0.0, 1.0])
