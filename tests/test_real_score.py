"""FLoE scoring end to end on the REAL SmolLM2-135M-Instruct with real embedded data."""
import json

import pytest

from floe.cli import main

# One test worker for both: the probe reuses the analysis the score test computed (same cache).
pytestmark = [pytest.mark.real, pytest.mark.xdist_group("real-analysis")]

SMALL = ["--device", "cpu", "--max-samples", "16", "--val-samples", "4", "--max-length", "64",
         "--batch-size", "8", "--score-samples", "8", "--score-batch-size", "8", "--quiet", "--json"]


def test_real_ranking_of_all_30_layers_is_reproducible(capsys):
    assert main(["analyze", *SMALL]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["analyze", *SMALL, "--force"]) == 0  # recompute warm-up and scoring
    second = json.loads(capsys.readouterr().out)
    assert sorted(first["ranking"]) == list(range(30))
    assert first["ranking"] == second["ranking"]
    assert first["ranking_without_refinement"] == second["ranking_without_refinement"]
    assert first["layer_scores"] == pytest.approx(second["layer_scores"], abs=1e-6)
    # Real scores spread: layers differ, and the budget leaves some capacity unused.
    assert max(first["layer_scores"]) - min(first["layer_scores"]) > 0.05
    assert first["model"] == "smollm2-135m" and first["data"] == "general"
