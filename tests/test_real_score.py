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


def test_real_analysis_travels_to_a_fresh_cache(capsys, tmp_path, monkeypatch):
    """floe runs pack / unpack on the real analysis: a fresh cache holding only the unpacked
    runs answers the same analyze from them, computing nothing."""
    from floe.store.runs import cache_root, list_runs
    assert main(["analyze", *SMALL]) == 0  # the test above's runs, or computed here
    first = json.loads(capsys.readouterr().out)
    archive = tmp_path / "analysis.tar.gz"
    assert main(["runs", "pack", first["run"], "--with-inputs", "--archive", str(archive), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 2  # the score run and its warm-up
    fresh = tmp_path / "cache"
    fresh.mkdir()
    (fresh / "models").symlink_to(cache_root() / "models", target_is_directory=True)
    monkeypatch.setenv("FLOE_CACHE", str(fresh))
    assert main(["runs", "unpack", "--archive", str(archive), "--json"]) == 0
    capsys.readouterr()
    states = {r.id: r.file("state.json").read_bytes() for r in list_runs()}
    assert main(["analyze", *SMALL]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["run"] == first["run"] and again["ranking"] == first["ranking"]
    assert {r.id: r.file("state.json").read_bytes() for r in list_runs()} == states  # nothing recomputed
