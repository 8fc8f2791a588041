"""The Validation page through streamlit's AppTest, on fixture runs: a score run and a probe
run whose gains follow depth, so FLoE's ranking can be checked against known answers."""
from __future__ import annotations

import app_fixtures as fx
import artifact_examples as examples
import pytest
from test_app_pages import figure, only_job, open_page, text_of

from floe import __version__
from floe.app import common, validation
from floe.method.stats import mean_ci
from floe.store import jobs
from floe.store.runs import run_for

PAGE = "pages/6_Validation.py"
pytestmark = pytest.mark.usefixtures("queued_jobs")  # conftest: jobs queued, not started


def make_probe_run(root, score_run, gains_by_seed: dict[int, list[float]]):
    """A probe.json of the score run's model and data with the given per-seed gains."""
    warm = score_run.config["warmup"]
    n = len(next(iter(gains_by_seed.values())))
    run = run_for("probe", {"floe": __version__, "model": warm["model"], "data": warm["data"],
                            "probe": {"mode": "single", "seeds": list(gains_by_seed)}}, root)
    cells = [{"layer": k, "seed": s, "train_run": f"train-{s}{k}", "adapted": [k],
              "val_loss_before": 3.0, "val_loss_after": 3.0 - g, "gain": g, "train_seconds": 1.0}
             for s, gains in gains_by_seed.items() for k, g in enumerate(gains)]
    cis = [mean_ci([gains[k] for gains in gains_by_seed.values()]) for k in range(n)]
    run.write_json("probe.json", {
        "model": warm["model"]["model"], "data": warm["data"]["data"], "mode": "single", "n_layers": n,
        "layers": list(range(n)), "seeds": list(gains_by_seed), "partial": False, "config": {},
        "cells": cells, "gain": [c["mean"] for c in cis], "gain_ci": cis, "base_val_loss": 3.0,
        "cell_seconds": 1.0, "storage": None})
    run.finish(["probe.json"])
    return run


def test_validation_page_aligns_gains_ranks_policies_and_states_the_verdict(cache):
    model = str(fx.make_model_folder(cache / "tiny-model", n_layers=8))
    score = fx.make_score_run(cache, model, n_layers=8)
    # Gains rise with depth (two seeds): deepest is right, shallowest exactly wrong.
    gains = {1: [0.01 * (k + 1) for k in range(8)], 2: [0.01 * (k + 1) + 0.002 for k in range(8)]}
    probe = make_probe_run(cache, score, gains)
    at = open_page(PAGE)
    assert not at.exception
    gain_fig = figure(at, 0)
    heat, bars = gain_fig["data"][0], gain_fig["data"][1]
    assert heat["x"] == bars["x"] == list(range(8))  # the gains sit under the score columns
    assert bars["y"] == pytest.approx([0.01 * (k + 1) + 0.001 for k in range(8)])
    # t(0.975, 1) * s / sqrt(2) with s = 0.002 / sqrt(2): 12.706 * 0.001 = 0.0127
    assert bars["error_y"]["array"] == pytest.approx([0.0127] * 8, rel=0.01)
    table = at.dataframe[0].value.set_index("policy")
    assert table.loc["deepest layers (last k)", "ρ"] == "+1.00"
    assert table.loc["shallowest layers (first k)", "ρ"] == "-1.00"
    assert table.loc["deepest layers (last k)", "P@3"] == "1.00"
    assert table.loc["deepest layers (last k)", "verdict"] == "predicts the gains"
    assert table.loc["shallowest layers (first k)", "verdict"] == "points away from the useful layers"
    summary = next(m.value for m in at.markdown if m.value.startswith("FLoE's ranking:"))
    assert "the best predictor of the measured gains: **deepest layers (last k)** (ρ +1.00" in summary
    # FLoE's ranking and its reverse mirror each other.
    figures = validation.agreement(score, probe)
    assert figures["floe"]["spearman"] == pytest.approx(-figures["floe-reverse"]["spearman"])
    scatter = figure(at, 1)
    assert "ρ" in scatter["layout"]["title"]["text"] and len(scatter["data"][0]["x"]) == 8
    assert "random (expected)" in [t["name"] for t in figure(at, 2)["data"]]


def test_validation_page_starts_a_probe_job(cache):
    model = str(fx.make_model_folder(cache / "tiny-model"))
    score = fx.make_score_run(cache, model)
    at = open_page(PAGE)
    assert "No probe" in text_of(at)
    command = at.code[-1].value
    # The cheap schedule on the analysis's data budget (128 examples of <= 128 tokens, 32 held out).
    assert command.startswith(f"floe probe --score-run {score.id}") and "--schedule joint" in command
    assert "--max-samples 128 --val-samples 32 --max-length 128" in command
    next(b for b in at.button if b.label == "Start the probe").click().run()
    job = only_job()
    assert job["args"][:3] == ["probe", "--score-run", score.id] and job["status"] == jobs.QUEUED


def test_refinement_summary_says_what_refinement_did():
    from floe.app.refinement import refinement_summary
    payload = {"refinement": {"swaps": 1, "dropped_to_fit": 7400, "fill": False, "filled": 0,
                              "greedy_loss": 2.0, "greedy_cost_ratio": 1.36, "fit_loss": 3.5,
                              "refined_loss": 3.4, "refined_cost_ratio": 0.999}}
    text = refinement_summary(payload)
    assert "1.36·C" in text and "7,400 units" in text and "1 swap(s)" in text and "99.9% of C" in text
    assert refinement_summary({"refinement": {"swaps": 1, "dropped_to_fit": 0}}) is None


def test_validation_page_offers_select_by_measurement_with_its_cost(cache):
    model = str(fx.make_model_folder(cache / "tiny-model", n_layers=8))
    score = fx.make_score_run(cache, model, n_layers=8)
    probe = make_probe_run(cache, score, {1: [0.01 * ((3 * k) % 8) for k in range(8)]})
    at = open_page(PAGE)
    assert not at.exception
    assert "Select by measurement" in [h.value for h in at.subheader]
    at.slider[0].set_value(3).run()
    chosen = validation.measured_selection(score, probe, 3)
    # gains 0, 3, 6, 1, 4, 7, 2, 5 (x 0.01): the top 3 are layers 5, 2, 7
    assert chosen["layers"] == [2, 5, 7] and chosen["seconds"] == 8.0  # 8 cells of 1 s
    assert "**select by measurement (probe run's gain), top 3:** 2, 5, 7" in text_of(at)
    cost = next(m for m in at.metric if m.label == "selection cost")
    assert cost.value == "8 s"
    # The fixture's probe records no data budget; FLoE's warm-up drew 128 examples of <= 128 tokens.
    assert not chosen["same_data"] and chosen["floe_data"] == "128 examples × ≤ 128 tokens"
    assert "Not the same data: the probe measured on ? examples" in text_of(at)
    next(b for b in at.button if b.label == "Train the measured top-k").click().run()
    job = only_job()
    assert job["args"][:7] == ["train", "--policy", "probe", "--probe-run", probe.id, "--k", "3"]


def test_train_page_takes_the_probe_ranking(cache):
    from floe.app import training
    model = str(fx.make_model_folder(cache / "tiny-model", n_layers=8))
    score = fx.make_score_run(cache, model, n_layers=8)
    probe = make_probe_run(cache, score, {1: [0.01 * ((3 * k) % 8) for k in range(8)]})
    at = open_page("pages/5_Train_export.py")
    at.radio[0].set_value("probe").run()
    at.slider[0].set_value(2).run()
    assert not at.exception
    assert training.chosen_layers(probe, "probe", 2) == [2, 5]
    assert "**Adapted layers (2):** 2, 5" in text_of(at)
    next(b for b in at.button if b.label == "Start sparse training").click().run()
    assert only_job()["args"][:7] == ["train", "--probe-run", probe.id, "--policy", "probe", "--k", "2"]


def test_the_cost_ratio_times_the_probe_and_floe_alike(cache):
    """A cheap probe's cost is its run's wall time (its model load included): FLoE's must be
    the warm-up's and the scoring's wall times. A cell probe's is its cells' training time
    (loads excluded): FLoE's must be the warm-up's training time and the scoring's stages."""
    from floe.experiments.validation import floe_cost
    from floe.store.runs import open_run
    model = str(fx.make_model_folder(cache / "tiny-model", n_layers=8))
    score = fx.make_score_run(cache, model, n_layers=8)
    warm = open_run(score.config["warmup_run"], cache)
    warm.write_json("warmup.json", examples.warmup_json(4, seconds=100.0))
    warm.finish(["warmup.json", "adapter/adapter_model.safetensors"])
    stages = {"taylor": 10.0, "fisher": 20.0, "search": 1.0, "refine": 2.0, "tune": 3.0, "baselines": 4.0}
    score.write_json("timings.json", examples.timings_json(**stages, total=50.0, threads=2))  # 10 s: the load
    score.finish(["units.safetensors", "layers.json", "timings.json"])
    cells = make_probe_run(cache, score, {1: [0.01 * ((3 * k) % 8) for k in range(8)]})  # 8 x 1 s
    cheap = make_probe_run(cache, score, {2: [0.01 * k for k in range(8)]})
    cheap.write_json("probe.json", {**cheap.read_json("probe.json"), "schedule": "joint", "seconds": 90.0,
                                    "ranking": list(range(8))[::-1]})
    cheap.finish(["probe.json"])
    # A warm-up without a recorded wall time (never held by a job): no ratio, not a wrong one.
    assert "started" not in warm.state and validation.measured_selection(score, cheap, 2)["ratio"] is None

    warm.update_state(started=1000.0, finished=1130.0)  # wall 130 s: load, validations, training
    wall = validation.measured_selection(score, cheap, 2)
    assert wall["seconds"] == 90.0 and wall["floe_seconds"] == pytest.approx(130.0 + 50.0)
    assert wall["ratio"] == pytest.approx(90.0 / 180.0)
    assert "wall time" in wall["what"] and "load" in wall["what"]
    trained = validation.measured_selection(score, cells, 2)
    assert trained["seconds"] == 8.0 and trained["floe_seconds"] == pytest.approx(100.0 + 40.0)
    assert trained["ratio"] == pytest.approx(8.0 / 140.0)
    assert "loads" in trained["what"] and "excluded" in trained["what"]
    assert floe_cost(score, "wall") == pytest.approx(180.0) and floe_cost(score, "training") == pytest.approx(140.0)


# --------------------------------------------------------------------------- the warm-up budget
def test_heatmaps_and_validation_say_the_warmup_budget_and_flag_a_starved_one(cache):
    model = str(fx.make_model_folder(cache / "tiny-model", n_layers=8))
    score = fx.make_score_run(cache, model, n_layers=8)  # its warm-up: 4 steps over 32 examples
    make_probe_run(cache, score, {1: [0.01 * k for k in range(8)], 2: [0.01 * k + 0.001 for k in range(8)]})
    for page in ("pages/1_Heatmaps.py", PAGE):
        text = text_of(open_page(page))
        assert "4 warm-up steps · 32 examples · ≤ 128 tokens each" in text
        assert "barely trained (under 100 steps" in text and "15,000" in text


def test_a_warmup_of_100_steps_or_more_is_not_flagged(cache):
    from floe.store.runs import open_run
    model = str(fx.make_model_folder(cache / "tiny-model", n_layers=8))
    score = fx.make_score_run(cache, model, n_layers=8)
    warm = open_run(score.config["warmup_run"], cache)
    warm.write_json("warmup.json", examples.warmup_json(128, n_train=1024))
    warm.log(event="step", stage="warmup", step=128, total_steps=128, loss=1.0, lr=2e-4, tokens_per_s=1000.0,
             elapsed=65.5, eta=0.0)
    warm.finish(["warmup.json", "adapter/adapter_model.safetensors"])
    budget = common.warmup_budget(score)
    assert (budget["steps"], budget["examples"], budget["tokens"], budget["starved"]) == (128, 1024, 65500, False)
    assert common.budget_warning(score) is None
    assert common.budget_line(score) == "128 warm-up steps · 1024 examples · ≤ 128 tokens each · 65,500 tokens"


def test_the_budget_curve_shows_floe_agreement_per_warmup_length(cache):
    from floe.store.runs import open_run
    model = str(fx.make_model_folder(cache / "tiny-model", n_layers=8))
    # Two warm-ups of the same model and data (another ratio, so another run): after 4 steps FLoE
    # ranks the shallowest first, after 128 the deepest; the gains rise with depth.
    shallow, deep = list(range(8)), list(range(7, -1, -1))
    short = fx.make_score_run(cache, model, n_layers=8, rankings={"floe": shallow, "floe-no-refine": shallow})
    long = fx.make_score_run(cache, model, n_layers=8, ratio=0.5, rankings={"floe": deep, "floe-no-refine": deep})
    warm = open_run(long.config["warmup_run"], cache)
    warm.write_json("warmup.json", examples.warmup_json(128, n_train=1024))
    warm.finish(["warmup.json", "adapter/adapter_model.safetensors"])
    probe = make_probe_run(cache, short, {1: [0.01 * k for k in range(8)], 2: [0.01 * k + 0.001 for k in range(8)]})
    assert [r.id for r in validation.budget_curve_runs(short, probe)] == [short.id, long.id]
    curve = validation.budget_curve(short, probe)
    floe = curve[curve["policy"] == "floe"].set_index("steps")["rho"]
    assert floe[4] == pytest.approx(-1.0) and floe[128] == pytest.approx(1.0)
    assert validation.budget_curve_sentence(curve).startswith(
        "FLoE after 4 warm-up steps: ρ -1.00 [-1.00, -1.00], points away from the useful layers; after 128 "
        "steps (1024 examples): ρ +1.00 [+1.00, +1.00], predicts the gains")
    at = open_page(PAGE)
    assert not at.exception and "Does the verdict hold after a longer warm-up?" in [h.value for h in at.subheader]
    assert "FLoE after 4 warm-up steps" in text_of(at)
    lines = next(f for i in range(6) if (f := figure(at, i))["layout"]["xaxis"].get("type") == "log")["data"]
    floe_line = next(t for t in lines if t["name"] == "FLoE (with refinement)")
    assert floe_line["x"] == [4, 128] and floe_line["y"] == pytest.approx([-1.0, 1.0])


@pytest.mark.parametrize("rho, ci, said", [(0.6, (0.2, 0.9), "predicts"), (0.1, (-0.3, 0.5), "chance"),
                                           (-0.5, (-0.8, -0.2), "away"), (None, (None, None), "chance"),
                                           (0.3, (0.0, 0.6), "chance")])
def test_the_verdict_says_what_the_interval_says(rho, ci, said):
    from floe.experiments.validation import direction, verdict
    figures = {"spearman": rho, "spearman_ci": list(ci), "partial_spearman": 0.4,
               "partial_spearman_ci": [0.1, 0.7]}
    assert direction(figures) == said
    sentence = verdict("floe", figures)
    assert (sentence is None) == (said == "predicts")
    if said == "away":
        assert "points away from the useful layers" in sentence and "below 0" in sentence
    if said == "chance":
        assert "includes 0" in sentence


def test_every_policy_has_its_own_colour_in_the_precision_figure():
    from floe.pipeline.policies import POLICIES
    table = {policy: {"precision_at_k": [0.5, 0.5]} for policy in POLICIES}
    fig = validation.precision_figure(table)
    colours = [trace.line.color for trace in fig.data if trace.name != "random (expected)"]
    assert len(colours) == len(POLICIES) == len(set(colours))
