"""A joint probe's set search in the app (floe.app.setsearch): the predicted loss per k
under the Train & export page's k slider with the suggested k, the one line that says how
to get a search when none exists, and policy probe-set offered where a probe run has one
(Train & export, Compare): through streamlit's AppTest on fixture runs, and the pure parts."""
from __future__ import annotations

from types import SimpleNamespace

import app_fixtures as fx
import artifact_examples as examples
import pytest
from test_app_pages import figure, only_job, open_page, text_of
from test_app_recommend import DEPTH, MEASURED, SHALLOW, button, gains, score_run, two_seeds
from test_app_validation import make_probe_run

from floe.app import common, compare, setsearch, training, validation
from floe.pipeline.policies import POLICIES

pytestmark = pytest.mark.usefixtures("queued_jobs")  # conftest: jobs queued, not started
TRAIN, COMPARE = "pages/5_Train_export.py", "pages/7_Compare.py"
N = 8  # test_app_recommend's depth


def curve_caption(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Predicted validation loss of each ranking"))


# --------------------------------------------------------------------------- the page
def test_the_curve_under_the_k_slider_marks_the_suggested_k(cache):
    score = score_run(cache, floe=SHALLOW)
    probe = fx.add_set_search(make_probe_run(cache, score, two_seeds(DEPTH)))
    found = probe.read_json("probe.json")["set_search"]
    at = open_page(TRAIN)
    at.slider[0].set_value(3).run()
    curve = figure(at, 0)  # under the slider, above the heatmap of the choice
    names = [t["name"] for t in curve["data"]]
    assert names == ["forward selection = probe-set", "probe (top-k singles)", "backward elimination", "deepest"]
    colors = {t["name"]: t["line"]["color"] for t in curve["data"]}
    policy = common.policy_colors()
    assert colors["probe (top-k singles)"] == policy["probe"] and colors["deepest"] == policy["deepest"]
    assert colors["forward selection = probe-set"] == policy["probe-set"]
    forward = curve["data"][0]
    assert forward["x"] == list(range(N + 1)) and forward["y"][0] == found["base_loss"]
    assert forward["y"][1:] == pytest.approx(found["curves"]["forward"])
    # The suggested k (4: the first k reaching 90 % of the all-layer gain), and the slider's.
    assert found["suggested"]["k"] == 4
    lines = {s["x0"] for s in curve["layout"]["shapes"] if s["x0"] == s["x1"]}
    assert lines == {4, 3}
    caption = curve_caption(at)
    assert f"the joint probe `{probe.id}` (no training per k" in caption
    assert "Suggested k (dashed line): k = 4 of 8: the smallest k whose gain" in caption
    assert "reaches 90% of the all-layer gain (0.1000)" in caption
    # Policy probe (the default here): its own curve at the slider's k.
    assert "Slider at k = 3: predicted loss 2.9430 on the probe (top-k singles) line, 57% of" in caption
    at.slider[0].set_value(5).run()
    assert "Slider at k = 5" in curve_caption(at)
    assert {s["x0"] for s in figure(at, 0)["layout"]["shapes"] if s["x0"] == s["x1"]} == {4, 5}


def test_without_a_set_search_one_line_says_how_to_get_one(cache):
    score = score_run(cache, floe=SHALLOW)
    make_probe_run(cache, score, two_seeds(DEPTH))  # a probe, but no set search
    at = open_page(TRAIN)
    assert POLICIES["probe-set"] not in at.radio[0].options and at.radio[0].options[-1] == POLICIES["probe"]
    line = next(c.value for c in at.caption if c.value.startswith("No predicted loss per k"))
    assert "no probe of this model and data has a set search" in line
    assert "about L² = 64 validation passes per seed for these 8 layers" in line
    assert f"`floe probe --score-run {score.id}" in line and "--schedule joint --set-search`" in line
    assert figure(at, 0)["data"][0]["type"] == "heatmap"  # no curve: the choice's heatmap comes first
    # The command carries the panel's cheap probe options (the same probe, with the search added).
    args = setsearch.search_command(score)
    assert args[-1] == "--set-search" and args[:3] == ["probe", "--score-run", score.id]
    assert all(flag in args for flag in ("--max-samples", "--val-samples", "--max-length", "--batch-size", "--lr"))


def test_no_probe_at_all_also_says_how_to_get_a_search(cache):
    score_run(cache, floe=SHALLOW)
    at = open_page(TRAIN)
    assert at.radio[0].value == "floe"
    assert "No predicted loss per k" in text_of(at)


def test_probe_set_is_offered_and_trains_the_searchs_set(cache):
    score = score_run(cache, floe=SHALLOW)
    plain = make_probe_run(cache, score, {3: gains(DEPTH), 4: gains(DEPTH, 0.002)})  # no search
    searched = fx.add_set_search(make_probe_run(cache, score, two_seeds(MEASURED)))
    at = open_page(TRAIN)
    assert at.radio[0].options[-2:] == [POLICIES["probe"], POLICIES["probe-set"]]
    assert len(next(s for s in at.selectbox if s.label == "Probe run").options) == 2  # policy probe: both
    at.radio[0].set_value("probe-set").run()
    # Only the probe run with a search ranks by probe-set.
    (only,) = next(s for s in at.selectbox if s.label == "Probe run").options
    assert only == validation.probe_label(searched)
    at.slider[0].set_value(3).run()
    order = searched.read_json("probe.json")["set_search"]["ranking"]
    assert training.chosen_layers(searched, "probe-set", 3) == sorted(order[:3])
    assert f"**Adapted layers (3):** {', '.join(map(str, sorted(order[:3])))}" in text_of(at)
    # At the slider: the better search's line (probe-set's own).
    assert "on the forward selection = probe-set line" in curve_caption(at)
    assert "Fair: the training draws data seed" in text_of(at)
    button(at, "Start sparse training").click().run()
    args = only_job()["args"]
    assert args[:7] == ["train", "--probe-run", searched.id, "--policy", "probe-set", "--k", "3"]
    assert plain.id not in args


def test_a_compare_started_with_a_searched_probe_has_the_probe_set_column(cache):
    score = score_run(cache, floe=SHALLOW)
    probe = fx.add_set_search(make_probe_run(cache, score, two_seeds(DEPTH)))
    at = open_page(COMPARE)
    button(at, "Start the compare").click().run()
    args = only_job()["args"]
    assert args[:5] == ["compare", "--score-run", score.id, "--probe-run", probe.id]
    assert args[args.index("--policies") + 1] == "probe,probe-set,floe,adapter-norm,deepest"


# --------------------------------------------------------------------------- pure parts
def test_the_curve_frame_starts_at_the_base_model_and_names_probe_set():
    found = examples.set_search_json(4, base=3.0, all_gain=0.2)
    frame = setsearch.curve_frame(found)
    assert list(frame.columns) == ["ranking", "label", "k", "val_loss"]
    assert len(frame) == 4 * 5  # four rankings, k = 0..4
    assert set(frame[frame["k"] == 0]["val_loss"]) == {3.0}
    assert list(frame[frame["k"] == 4]["val_loss"]) == pytest.approx([2.8] * 4)  # every line ends at all layers
    assert list(frame.drop_duplicates("ranking")["label"]) == ["forward selection = probe-set", "probe (top-k singles)",
                                                               "backward elimination", "deepest"]
    assert setsearch.slider_curve(found, "probe-set") == "forward"
    assert setsearch.slider_curve(found, "deepest") == "deepest"
    assert setsearch.slider_curve(found, "random") == "forward"  # no curve of its own
    assert setsearch.curve_colors(found)["backward"] == setsearch.OTHER_SEARCH_COLOR
    assert compare.fair_policies(["probe", "floe"]) == ["probe", "floe"]  # no probe-set without a search
    # A search drawn against a score run: its floe and adapter-norm lines, and where they come from.
    found = examples.set_search_json(4, score_run="score-elsewhere", rankings={
        **found["rankings"], "floe": [0, 1, 2, 3], "adapter-norm": [3, 1, 2, 0]}, curves={
        **found["curves"], "floe": found["curves"]["deepest"], "adapter-norm": found["curves"]["deepest"]})
    assert setsearch.curve_order(found) == ["forward", "probe", "backward", "floe", "adapter-norm", "deepest"]
    here, probe = SimpleNamespace(id="score-here"), SimpleNamespace(id="probe-x")
    caption = setsearch.curve_caption(found, probe, 9, "floe", here)
    assert "Slider at k = 9: beyond the 4 layers the probe measured." in caption
    assert "The adapter-norm and floe lines are the rankings of score run `score-elsewhere`." in caption
    assert "score run" not in setsearch.curve_caption(found, probe, 2, "floe", SimpleNamespace(id="score-elsewhere"))

