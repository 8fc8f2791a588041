"""The recommendation panel (floe.app.recommend, drawn by widgets.recommendation_panel) in each
of its three cases, the fair data seed of whatever is launched from a probe's ranking, the
verdict of each kind of interval, the Compare page, the runs filter, the clean-up preview
and the export built only on request: through streamlit's AppTest on fixture runs."""
from __future__ import annotations

import app_fixtures as fx
import pytest
from test_app_pages import only_job, open_page, text_of
from test_app_validation import make_probe_run

from floe.app import common, recommend, training, validation
from floe.store import jobs
from floe.store.runs import list_runs, open_run, run_for

pytestmark = pytest.mark.usefixtures("queued_jobs")  # conftest: jobs queued, not started
HEATMAPS, TRAIN, VALIDATION, COMPARE = ("pages/1_Heatmaps.py", "pages/5_Train_export.py",
                                        "pages/6_Validation.py", "pages/7_Compare.py")
N = 8
DEPTH = list(range(N))[::-1]           # deepest first
SHALLOW = list(range(N))               # shallowest first
INTERLEAVED = [0, 7, 1, 6, 2, 5, 3, 4]  # no relation to depth
# Measured gains whose order is this (most useful first): close to depth, not depth.
MEASURED = [5, 7, 6, 4, 3, 1, 2, 0]


def gains(order: list[int], offset: float = 0.0) -> list[float]:
    """Per-layer gains whose ranking (largest first) is ``order``."""
    out = [0.0] * len(order)
    for place, layer in enumerate(order):
        out[layer] = 0.01 * (len(order) - place) + offset
    return out


def two_seeds(order: list[int]) -> dict[int, list[float]]:
    return {1: gains(order), 2: gains(order, 0.002)}


def score_run(cache, floe: list[int], data: str = "general", **kw):
    model = str(fx.make_model_folder(cache / "tiny-model", n_layers=N))
    rankings = {"floe": floe, "floe-no-refine": floe, "adapter_norm": MEASURED, "weight_norm": INTERLEAVED, **kw}
    return fx.make_score_run(cache, model, n_layers=N, data=data, rankings=rankings)


def timed(run):
    """Give the score run's warm-up a wall time (fixture runs have none): 100 s + 3 s scoring."""
    warm = open_run(run.config["warmup_run"])
    warm.update_state(started=1000.0, finished=1100.0)
    return run


def forget_jobs() -> None:
    for job in jobs.list_jobs():
        jobs.cancel(job["id"])
        jobs.delete(job["id"])


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


# --------------------------------------------------------------------------- measured
def test_measured_the_probe_picks_the_layers_and_trains_them_on_another_data_seed(cache):
    score = timed(score_run(cache, floe=SHALLOW))
    probe = make_probe_run(cache, score, two_seeds(DEPTH))
    at = open_page(TRAIN)
    assert at.radio[0].value == "probe"  # the measured ranking is the default policy
    at.slider[0].set_value(3).run()
    text = text_of(at)
    assert "Recommendation: Adapt layers 5, 6, 7 (k = 3)" in text
    assert "**Measured** on this model and data" in text and probe.id in text
    assert "FLoE's top 3: 0, 1, 2 (0 of 3 in common)" in text
    assert "ρ -1.00" in text and "**points away from the useful layers** (its scores after 4 warm-up steps" in text
    assert "Held-out compare: none yet of select by measurement" in text
    # Fair by default: another data seed than the probe's 42, and how many examples it saw.
    assert "Fair: the training draws data seed 43, not the probe's 42" in text
    assert "0 of its 32 validation examples were in the probe's sample of 160" in text
    assert not [b for b in at.button if b.label == "Start the cheap probe"]  # nothing to settle
    button(at, "Train the recommendation").click().run()
    args = only_job()["args"]
    assert args[:7] == ["train", "--policy", "probe", "--probe-run", probe.id, "--k", "3"]
    assert args[args.index("--seed") + 1] == "43"
    assert training.chosen_layers(probe, "probe", 3) == [5, 6, 7]


def test_training_from_the_probe_by_hand_draws_another_seed_too(cache):
    score = score_run(cache, floe=SHALLOW)
    probe = make_probe_run(cache, score, two_seeds(DEPTH))
    at = open_page(TRAIN)
    button(at, "Start sparse training").click().run()
    args = only_job()["args"]
    assert args[:3] == ["train", "--probe-run", probe.id] and args[args.index("--seed") + 1] == "43"
    forget_jobs()
    at = open_page(VALIDATION)
    button(at, "Train the measured top-k").click().run()
    args = only_job()["args"]
    assert args[:5] == ["train", "--policy", "probe", "--probe-run", probe.id] and "--seed" in args
    assert "Fair: the training draws data seed 43, not the probe's 42" in text_of(at)


def test_a_held_out_compare_shows_its_paired_difference(cache):
    score = score_run(cache, floe=SHALLOW)
    probe = make_probe_run(cache, score, two_seeds(DEPTH))
    compare = fx.make_compare_run(cache, score, ks=(8, 3), policies=("floe", "probe"))
    payload = compare.read_json("compare.json")
    assert payload["differences"]["reference"] == "floe"
    # The fixture's compare names no probe run: it does not count for this probe...
    rec = recommend.recommend(score, 3)
    assert rec.source == "measured" and rec.compare is None
    # ...one that used it does, at the nearest compared k.
    compare.write_json("compare.json", {**payload, "selection": {"probe_run": probe.id, "val_seen_by_probe": 0,
                                                                 "n_val": 32, "probe_data": {"seed": 42}}})
    compare.finish(["compare.json", "compare.csv"])
    rec = recommend.recommend(score, 4)
    assert rec.compare["k"] == 3 and rec.compare["asked_k"] == 4 and rec.compare["val_seen"] == 0
    assert "(not compared at k = 4)" in rec.lines["compare"] and "lower is better" in rec.lines["compare"]


# --------------------------------------------------------------------------- best agreement
def test_best_agreement_takes_the_ranking_that_predicted_the_gains_elsewhere(cache):
    checked = score_run(cache, floe=SHALLOW, data="medical")
    make_probe_run(cache, checked, two_seeds(MEASURED))
    fresh = score_run(cache, floe=INTERLEAVED)  # newest: the pages pick it first
    at = open_page()
    at.slider[0].set_value(3).run()
    text = text_of(at)
    assert "**Best agreement so far**: no probe of this model and data yet" in text
    assert "**warm-up adapter norm** (ρ +1.00 [+1.00, +1.00] on tiny-model · medical" in text
    assert "It has not been checked on this data." in text
    assert "Recommendation: Adapt layers 5, 6, 7 (k = 3)" in text  # MEASURED's top 3 on this run
    assert "FLoE's ranking against the measured gains on tiny-model · medical: ρ -" in text
    assert "(its scores after 4 warm-up steps · 32 examples · ≤ 128 tokens each)." in text  # the budget it holds at
    button(at, "Train the recommendation").click().run()
    args = only_job()["args"]
    assert args[:7] == ["train", "--score-run", fresh.id, "--policy", "adapter-norm", "--k", "3"]
    assert "--seed" not in args  # no probe chose these layers on this data
    forget_jobs()
    at = open_page()
    button(at, "Start the cheap probe").click().run()
    assert only_job()["args"][:3] == ["probe", "--score-run", fresh.id]


# --------------------------------------------------------------------------- unchecked
def test_unchecked_floe_with_the_plain_note_and_the_cheap_probe_that_settles_it(cache):
    score = timed(score_run(cache, floe=INTERLEAVED))
    at = open_page(HEATMAPS)
    text = text_of(at)
    assert "**Unchecked**: FLoE's ranking. Nothing has checked it" in text
    top5 = sorted(INTERLEAVED[:5])
    assert f"Recommendation: Adapt layers {', '.join(map(str, top5))} (k = 5)" in text
    assert "(the same layers)" in text and "not checked against measured gains" in text
    assert "Selection cost: FLoE's warm-up + scoring, 1.7 min on 128 examples × ≤ 128 tokens." in text
    assert "Held-out compare" not in text  # the recommendation is FLoE's own
    # The cheap probe on the analysis's data budget: about 0.78 x FLoE's 103 s.
    assert "joint costs 0.78x FLoE's warm-up + scoring" in text and "about 80 s" in text
    button(at, "Start the cheap probe").click().run()
    args = only_job()["args"]
    assert args[:3] == ["probe", "--score-run", score.id]
    flags = dict(zip(args[3::2], args[4::2]))
    assert flags["--schedule"] == "joint"
    # Passed even where they equal the parser's defaults: the probe's own defaults differ.
    assert (flags["--max-samples"], flags["--val-samples"], flags["--max-length"]) == ("128", "32", "128")
    assert (flags["--batch-size"], flags["--lr"]) == ("4", "0.001")
    # Queued: the panel says so and does not offer a second probe.
    assert "under way" in text_of(at)
    assert button(at, "Start the cheap probe").disabled
    button(at, "Train the recommendation").click().run()
    train = [j for j in jobs.list_jobs() if j["args"][0] == "train"][0]["args"]
    assert train[:7] == ["train", "--score-run", score.id, "--policy", "floe", "--k", "5"]


def test_the_panel_is_the_same_on_runs_heatmaps_and_train(cache):
    score_run(cache, floe=INTERLEAVED)
    titles = []
    for page in (None, HEATMAPS, TRAIN):
        at = open_page(page)
        (k_slider,) = [s for s in at.slider if s.label.startswith(("k:", "Top-k"))]
        k_slider.set_value(4).run()
        titles.append(next(m.value for m in at.markdown if "Recommendation:" in m.value))
    assert len(set(titles)) == 1 and "(k = 4)" in titles[0]


# --------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize("floe, said", [(MEASURED, "predicts the gains"),
                                        (INTERLEAVED, "no better than chance"),
                                        (SHALLOW, "points away from the useful layers")])
def test_each_interval_gets_its_verdict_in_one_sentence(cache, floe, said):
    score = score_run(cache, floe=floe)
    probe = make_probe_run(cache, score, two_seeds(MEASURED))
    figures = validation.agreement(score, probe)["floe"]
    lo, hi = figures["spearman_ci"]
    assert {"predicts the gains": lo > 0, "no better than chance": lo <= 0 <= hi,
            "points away from the useful layers": hi < 0}[said]
    at = open_page(VALIDATION)
    table = at.dataframe[0].value.set_index("policy")
    assert table.loc["FLoE (with refinement)", "verdict"] == said
    assert not [c for c in table.columns if "compare" in c]  # held-out results: the Compare page
    summary = next(m.value for m in at.markdown if m.value.startswith("FLoE's ranking:"))
    assert f"FLoE's ranking: **{said}**" in summary and "best predictor" in summary
    assert "Of the " in summary and "(the verdict column)" in summary
    # One sentence, not a stack of warnings: the only warning left is the warm-up budget's.
    assert [w.value for w in at.warning] == [common.budget_warning(score)]


def test_the_probe_form_defaults_to_the_cheap_schedule_with_a_time_estimate(cache):
    score = timed(score_run(cache, floe=INTERLEAVED))
    at = open_page(VALIDATION)
    assert next(s for s in at.selectbox if s.label == "--schedule").value == "joint"
    assert "Time: about 80 s" in text_of(at)
    assert f"floe probe --score-run {score.id}" in at.code[-1].value and "--schedule joint" in at.code[-1].value
    next(s for s in at.selectbox if s.label == "--schedule").set_value("cells").run()
    assert "Time: about 12.4 min" in text_of(at)  # 7.2 x 103 s
    headers = [m.value for m in at.markdown]
    assert "**adapter (HydraLoRA)**" in headers and "**probe**" in headers
    assert not [h for h in headers if "Config**" in h]
    assert "--schedule" not in at.code[-1].value  # cells is the CLI's default


# --------------------------------------------------------------------------- compare page
def test_the_compare_page_pairs_every_policy_with_floe_probe_included(cache):
    score = score_run(cache, floe=SHALLOW)
    probe = make_probe_run(cache, score, two_seeds(DEPTH))
    compare = fx.make_compare_run(cache, score, ks=(3,), policies=("floe", "probe", "adapter-norm"))
    payload = compare.read_json("compare.json")
    payload["base"]["metrics"] = {"val_loss": 2.5, "arc-easy/acc": 0.4}
    payload["selection"] = {"probe_run": probe.id, "val_seen_by_probe": 0, "n_val": 32, "probe_data": {"seed": 42}}
    compare.write_json("compare.json", payload)
    compare.finish(["compare.json", "compare.csv"])
    at = open_page(COMPARE)
    table = at.dataframe[0].value
    assert list(table["policy"]) == ["no adapter (base model)", "FLoE (with refinement)",
                                     "select by measurement (probe run's gain)", "warm-up adapter norm"]
    probe_row = table[table["policy"].str.startswith("select by")].iloc[0]
    assert probe_row["mean"] == "2.0150" and probe_row["minus floe"] == "+0.0100"  # 4 decimals, signed
    assert table.iloc[1]["verdict"] == "reference"
    text = text_of(at)
    assert "val_loss: lower is better" in text and "At k = 3 the lowest val_loss: **FLoE" in text
    assert "Fair: the probe" in text and "had seen none of the 32 validation examples" in text
    at.selectbox[2].set_value("arc-easy/acc").run()
    table = at.dataframe[0].value
    assert table.iloc[0]["mean"] == "40.00 %" and "higher is better" in text_of(at)
    # A compare started here is fair by default and has the probe's column.
    button(at, "Start the compare").click().run()
    args = only_job()["args"]
    assert args[:5] == ["compare", "--score-run", score.id, "--probe-run", probe.id]
    assert args[args.index("--seed") + 1] == "43"
    assert args[args.index("--policies") + 1] == "probe,floe,adapter-norm,deepest"
    assert "Fair: the compare draws data seed 43, not the probe's 42" in text_of(at)


def test_refinement_keeps_only_refinement(cache):
    score = score_run(cache, floe=SHALLOW)
    fx.make_compare_run(cache, score)
    at = open_page("pages/3_Refinement.py")
    assert "Evaluation per k" not in [h.value for h in at.subheader]
    assert len(at.dataframe) == 1  # the moves; the compare table is the Compare page's
    assert any("Compare page" in link.proto.label for link in at.get("page_link"))


# --------------------------------------------------------------------------- runs page
def test_the_runs_filter_shows_score_runs_first_and_one_kind_at_a_time(cache):
    score = score_run(cache, floe=SHALLOW)
    fx.make_train_run(cache, score, "floe", 2)  # newer than the score run
    at = open_page()
    kinds = at.multiselect(key="runs:kinds")
    assert kinds.options == ["score (1)", "train (1)", "warmup (1)"]
    table = at.dataframe[0].value
    assert list(table["kind"]) == ["score", "train", "warmup"]  # score runs first
    assert table.loc[0, "samples"] == 128 and table.loc[0, "warm-up steps"] == 4
    assert "· 128 ex · 4 steps ·" in common.run_label(score)
    kinds.set_value(["train"]).run()
    assert list(at.dataframe[0].value["kind"]) == ["train"]


def test_clean_up_previews_what_it_deletes(cache):
    score = score_run(cache, floe=SHALLOW)
    failed = run_for("warmup", {"model": {"model": "y"}, "data": {"data": "general", "ratio": 1.0}})
    failed.update_state(status="failed", error="ValueError: typo")
    at = open_page()
    button(at, "Clean up").click().run()
    preview = next(d.value for d in at.dataframe if list(d.value.columns) == ["run", "why"])
    assert list(preview["run"]) == [failed.id] and list(preview["why"]) == ["failed"]
    assert failed.path.exists()  # nothing deleted before the confirmation
    at.button(key="cleanup:confirm").click().run()
    assert not failed.path.exists() and score.path.exists()
    button(at, "Clean up").click().run()
    assert "Nothing to clean up" in text_of(at)


# --------------------------------------------------------------------------- train & export
def test_the_export_is_built_only_when_a_download_asks_for_it(cache):
    score = score_run(cache, floe=SHALLOW)
    train = fx.make_train_run(cache, score, "floe", 2)
    at = open_page(TRAIN)
    at.radio[0].set_value("floe").run()
    at.slider[0].set_value(2).run()
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Layer list (JSON)", *training.export_names(train)]
    assert not (cache / "exports").exists()  # opening the page wrote nothing
    import yaml
    config = yaml.safe_load(training.export_file(train, "config.yaml"))
    assert config["layers"] == training.chosen_layers(score, "floe", 2)
    assert (cache / "exports" / train.id).is_dir()
    seconds = at.dataframe[0].value["seconds"].item()
    assert seconds == 10.0


def test_a_queued_training_is_not_reported_as_missing(cache):
    score = score_run(cache, floe=SHALLOW)
    at = open_page(TRAIN)
    at.radio[0].set_value("floe").run()
    at.slider[0].set_value(3).run()
    assert "No training run for this choice yet" in text_of(at)
    button(at, "Start sparse training").click().run()
    assert only_job()["status"] == jobs.QUEUED and not [r for r in list_runs() if r.kind == "train"]
    text = text_of(at)
    assert "No training run for this choice yet" not in text
    assert "The training of this choice is queued" in text
    assert training.pending_training(jobs.list_jobs(), score, "floe", 3) is not None
    assert training.pending_training(jobs.list_jobs(), score, "floe", 4) is None


# --------------------------------------------------------------------------- pure pieces
@pytest.mark.parametrize("lo, hi, lower, said", [(-0.2, -0.1, True, "better than FLoE"),
                                                 (0.1, 0.2, True, "worse than FLoE"),
                                                 (0.1, 0.2, False, "better than FLoE"),
                                                 (-0.1, 0.2, True, "no difference the seeds support"),
                                                 (None, None, True, "one seed, no interval")])
def test_a_paired_difference_says_what_its_interval_says(lo, hi, lower, said):
    assert recommend.difference_verdict({"ci_low": lo, "ci_high": hi}, lower) == said


def test_seconds_read_as_a_person_reads_them():
    assert [recommend.format_seconds(s) for s in (None, 8.04321, 89.6, 204.0, 7300.0)] == \
        ["–", "8 s", "90 s", "3.4 min", "2.0 h"]


def test_the_fair_seed_avoids_the_probes_sample_and_says_so_when_it_cannot_check(tmp_path):
    probe = {"data": "general", "ratio": 1.0, "max_samples": 32, "val_samples": 16, "max_length": 64, "seed": 42}
    fair = recommend.fair_seed(probe, {"max_samples": 32, "val_samples": 16, "max_length": 64})
    assert fair["seed"] != 42 and fair["probe_seed"] == 42 and fair["val_seen"] == 0 and fair["n_val"] == 16
    gone = recommend.fair_seed({**probe, "data": str(tmp_path / "gone.jsonl")}, {"max_samples": 32})
    assert gone == {"seed": 43, "probe_seed": 42, "val_seen": None, "n_val": None, "n_probe": 48}


def test_form_groups_have_human_names():
    from floe.app.forms import group_title
    assert [group_title(g) for g in ("options", "HydraLoraConfig", "TrainConfig", "SetSearchConfig")] == \
        ["general", "adapter (HydraLoRA)", "training", "set search"]
