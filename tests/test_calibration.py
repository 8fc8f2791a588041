"""Calibration of the set search's predicted losses against trained sparse adapters
(floe.experiments.calibration) and its section on the Validation page."""
from __future__ import annotations

import app_fixtures as fx
import artifact_examples as examples
import pytest
from test_app_pages import figure, open_page
from test_app_recommend import DEPTH, SHALLOW, score_run, two_seeds
from test_app_validation import make_probe_run

from floe.experiments.calibration import calibration, differing_settings, predicted_loss
from floe.store.runs import run_for

FOUND = examples.set_search_json(8)  # forward does better; rankings probe, forward, backward, deepest


def result(policy: str, layers: list[int], *losses: float) -> list[dict]:
    return [{"policy": policy, "k": len(layers), "seed": 42 + i, "layers": layers, "metrics": {"val_loss": v},
             "eval_run": None, "train_run": None, "train_seconds": 1.0, "trainable_parameters": 1}
            for i, v in enumerate(losses)]


def compare_with(*results: list[dict]) -> dict:
    return examples.compare_json("score-000000000000", [], results=[r for rs in results for r in rs])


def test_a_sets_prediction_is_read_from_the_curve_that_holds_that_set():
    deepest = FOUND["rankings"]["deepest"]
    assert predicted_loss(FOUND, sorted(deepest[:3])) == FOUND["curves"]["deepest"][2]
    # The same set named by another ranking's order is found by its members, not its name.
    forward2 = FOUND["rankings"]["forward"][:2]
    assert predicted_loss(FOUND, forward2[::-1]) == FOUND["curves"]["forward"][1]
    assert predicted_loss(FOUND, list(range(8))) == FOUND["all_loss"]
    assert predicted_loss(FOUND, []) == FOUND["base_loss"]
    assert predicted_loss(FOUND, [0, 7]) is None  # no curve's top 2


def test_calibration_ranks_cells_and_measures_the_gap():
    order = FOUND["rankings"]
    compare = compare_with(result("deepest", order["deepest"][:2], 2.99, 3.01),
                           result("probe-set", order["forward"][:2], 2.95, 2.97),
                           result("probe", order["probe"][:4], 2.94),
                           result("floe", [0, 7], 2.9),  # no curve holds it
                           result("random", [1, 2], 3.0) + [{**result("random", [3, 4], 3.0)[0], "seed": 43}],
                           result("lora-drop", order["deepest"][:2], 2.0),  # deepest's set: one point
                           result("all", list(range(8)), 2.9))
    found = calibration(FOUND, compare, {"data.seed": [42, 1]}, n_boot=200)
    assert [(c["policy"], c["k"]) for c in found["cells"]] == [("deepest", 2), ("probe-set", 2), ("probe", 4)]
    deep = found["cells"][0]
    assert deep["also"] == ["lora-drop"]  # named, but the first policy's training is the point
    assert deep["trained"] == pytest.approx(3.0) and deep["predicted"] == FOUND["curves"]["deepest"][1]
    # The all-layer set is the joint adapter itself: reported apart, out of the statistics.
    assert found["all_layers"]["predicted"] == FOUND["all_loss"] and found["all_layers"]["trained"] == 2.9
    assert deep["gap"] == pytest.approx(3.0 - deep["predicted"])
    assert found["unmatched"] == [{"policy": "floe", "k": 2, "layers": [0, 7]}]  # random: sets differ by seed
    # The predictions order the trained losses exactly here: deepest worst, then probe-set, then probe.
    assert found["spearman"] == pytest.approx(1.0)
    assert found["mean_gap"] == pytest.approx(sum(c["gap"] for c in found["cells"]) / 3)
    assert found["conditions"] == {"data.seed": [42, 1]}
    assert calibration(FOUND, compare_with(result("deepest", order["deepest"][:2], 3.0)))["spearman"] is None


def test_differing_settings_name_what_the_compare_changed():
    probe = {"data": {"seed": 42, "max_samples": 32}, "train": {"lr": 1e-3, "batch_size": 4}}
    same = {"data": {"seed": 42, "max_samples": 32}, "train": {"lr": 1e-3, "batch_size": 4}, "compare": {}}
    assert differing_settings(probe, same) == {}
    other = {"data": {"seed": 1, "max_samples": 32}, "train": {"lr": 2e-4, "batch_size": 4}}
    assert differing_settings(probe, other) == {"data.seed": [42, 1], "train.lr": [1e-3, 2e-4]}


def test_the_validation_page_draws_the_calibration_of_a_compare_from_the_probe(cache):
    score = score_run(cache, floe=SHALLOW)
    probe = fx.add_set_search(make_probe_run(cache, score, two_seeds(DEPTH)))
    order = probe.read_json("probe.json")["set_search"]["rankings"]
    data = {**probe.config["data"], "seed": 1}  # the compare judges on another sample
    compare = run_for("compare", {"score_run": score.id, "probe_run": probe.id, "data": data,
                                  "compare": {"ks": [2, 4]}}, cache)
    results = (result("deepest", order["deepest"][:2], 2.99) + result("probe-set", order["forward"][:2], 2.95)
               + result("probe", order["probe"][:4], 2.94) + result("deepest", order["deepest"][:4], 2.96))
    compare.write_json("compare.json", examples.compare_json(score.id, [], results=results))
    compare.finish(["compare.json"])
    at = open_page("pages/6_Validation.py")
    assert not at.exception
    assert "Does the set search predict trained losses?" in [h.value for h in at.subheader]
    sentence = next(m.value for m in at.markdown if m.value.startswith("Over 4 trained sets"))
    assert "Spearman ρ = " in sentence
    assert "differing from the probe's: data.seed 42 → 1 (another validation sample: the gap mixes" in sentence
    charts = [figure(at, i) for i in range(len(at.get("plotly_chart")))]
    drawn = next(c for c in charts if any(t.get("name") == "trained = predicted" for t in c["data"]))
    points = [t for t in drawn["data"] if t["mode"] == "markers+text"]
    assert len(points) == 3 and sum(len(t["x"]) for t in points) == 4  # three policies, four cells
