"""Every page through streamlit's AppTest: empty cache, fixture runs, each widget's main path."""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import app_fixtures as fx
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from floe.app import common, refinement, training
from floe.app import widgets as ui
from floe.store import jobs
from floe.store.runs import list_runs, run_for

ROOT = Path(__file__).resolve().parent.parent
# The app's pages besides app.py: what Streamlit finds in pages/, in their numbered order.
PAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))
# Jobs are queued but not started (conftest.queued_jobs).
pytestmark = pytest.mark.usefixtures("queued_jobs")


@pytest.fixture
def model(cache):
    return str(fx.make_model_folder(cache / "tiny-model"))


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _decode(value):
    """Plotly sends numpy arrays as base64 typed arrays; turn them back into lists."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = [int(n) for n in str(value.get("shape", len(array))).split(",")]
        return array.reshape(shape).tolist()
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def figure(at: AppTest, index: int = 0) -> dict:
    return _decode(json.loads(at.get("plotly_chart")[index].proto.spec))


def text_of(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "info", "error", "caption", "success", "warning")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def only_job() -> dict:
    (job,) = jobs.list_jobs()
    return job


def test_the_navigation_links_every_page():
    assert [path for path, _, _ in ui.PAGES] == ["app.py", *PAGES]


# --------------------------------------------------------------------------- empty cache
@pytest.mark.parametrize("page", [None] + PAGES)
def test_every_page_renders_an_empty_state_that_says_what_to_do(cache, page):
    at = open_page(page)
    assert at.info, "an empty page explains what to do next"
    assert not at.get("plotly_chart")


def test_one_click_analysis_queues_the_embedded_default(cache):
    at = open_page()
    assert "No runs yet" in text_of(at)
    at.button(key="quick").click().run()
    job = only_job()
    assert job["args"] == ui.quick_args() and job["args"][:5] == ["analyze", "--model", "smollm2-135m",
                                                                "--data", "general"]
    assert job["status"] == jobs.QUEUED
    assert "queued" in text_of(open_page())  # the job card survives a reload


def test_empty_heatmaps_page_starts_an_analysis_too(cache):
    at = open_page(PAGES[0])
    at.button(key="quick-heatmaps").click().run()
    assert only_job()["args"][0] == "analyze"


# --------------------------------------------------------------------------- runs page
def test_runs_table_lists_runs_and_deletes_the_selected_one(cache, model):
    score = fx.make_score_run(cache, model)
    at = open_page()
    table = at.dataframe[0].value
    assert set(table["kind"]) == {"warmup", "score"} and set(table["status"]) == {"done"}
    assert table.loc[table["kind"] == "score", "model"].item() == "tiny-model"
    assert at.multiselect(key="runs:kinds").value == ["score", "warmup"]
    runs_picker = next(m for m in at.multiselect if m.label == "Select runs to resume or delete")
    runs_picker.select(score.id).run()
    delete = next(b for b in at.button if b.label == "Delete")
    assert delete.disabled  # not before the confirmation
    at.checkbox[0].check().run()
    next(b for b in at.button if b.label == "Delete").click().run()
    assert not score.path.exists() and [r.kind for r in list_runs()] == ["warmup"]


def test_selected_runs_are_packed_for_another_machine_and_added_back(cache, model):
    from floe.app.runs import add_archive, archive_bytes
    score = fx.make_score_run(cache, model)
    at = open_page()
    pack = next(b for b in at.button if b.label == "Pack for another machine")
    assert pack.disabled  # nothing selected
    next(m for m in at.multiselect if m.label == "Select runs to resume or delete").select(score.id).run()
    next(b for b in at.button if b.label == "Pack for another machine").click().run()
    assert not at.exception
    (download,) = [b for b in at.get("download_button") if b.proto.label.startswith("Download")]
    assert download.proto.label.startswith(f"Download {score.id}.tar.gz (")
    # The upload's path (AppTest has no file uploader): the bytes a download gives, added back.
    data = archive_bytes([score.id])
    for run in list_runs():
        run.delete()
    assert add_archive(data)["added"] == sorted([score.id, score.config["warmup_run"]])
    assert {r.id for r in list_runs()} == {score.id, score.config["warmup_run"]}


def test_a_corrupt_state_is_listed_deleted_and_cleaned_up(cache, model):
    """A crash or a full disk can leave state.json unreadable: the Runs page still shows the
    run (as corrupt), deletes it, and "Clean up" removes failed, stale and corrupt runs."""
    score = fx.make_score_run(cache, model)
    broken = run_for("warmup", {"model": {"model": "x"}, "data": {"data": "general", "ratio": 1.0}})
    broken.file("state.json").write_text('{"status": "runn')
    failed = run_for("warmup", {"model": {"model": "y"}, "data": {"data": "general", "ratio": 1.0}})
    failed.update_state(status="failed", error="ValueError: typo")
    at = open_page()
    table = at.dataframe[0].value
    assert table.loc[table["run"] == broken.id, "status"].item() == "corrupt"
    next(m for m in at.multiselect if m.label == "Select runs to resume or delete").select(broken.id).run()
    assert not at.exception
    next(b for b in at.button if b.label == "Clean up").click().run()
    assert not at.exception
    at.button(key="cleanup:confirm").click().run()
    assert sorted(r.id for r in list_runs()) == sorted([score.id, score.config["warmup_run"]])


def test_the_remote_code_checkbox_is_hidden_unless_the_server_allows_it(cache, monkeypatch):
    monkeypatch.delenv("FLOE_ALLOW_REMOTE_CODE", raising=False)
    assert "--trust-remote-code" not in [c.label for c in open_page().checkbox]
    monkeypatch.setenv("FLOE_ALLOW_REMOTE_CODE", "1")
    assert "--trust-remote-code" in [c.label for c in open_page().checkbox]


def test_a_stopped_run_is_resumed_through_its_job(cache):
    run = run_for("warmup", {"model": {"model": "x"}, "data": {"data": "general", "ratio": 1.0}})
    run.update_state(status="cancelled", error="cancelled")
    job = jobs.submit(jobs.floe_command(["warmup"]), "warm-up", ["warmup"])
    jobs.cancel(job["id"])
    jobs.update_job(job["id"], None, runs=[run.id])
    at = open_page()
    at.multiselect[0].select(run.id).run()
    next(b for b in at.button if b.label == "Resume").click().run()
    assert jobs.get(job["id"])["status"] == jobs.QUEUED


def test_analysis_form_takes_a_local_model_and_data_file(cache, model, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(3)))
    at = open_page()
    at.radio[0].set_value("local folder").run()
    at.text_input[0].input(str(tmp_path / "nowhere")).run()
    assert "does not exist" in text_of(at)
    at.text_input[0].input(model).run()
    assert "llama, 4 layers" in text_of(at)
    at.radio[1].set_value("local file").run()
    at.text_input[1].input(str(data)).run()
    assert "3 usable examples" in text_of(at)
    assert "fewer examples than the 40" in text_of(at)  # 32 + 8 of the quick settings
    command = at.code[-1].value
    assert command.startswith("floe analyze --model") and f"--data {data}" in command
    assert "--max-samples 32" in command  # the quick settings on a CPU machine
    next(b for b in at.button if b.label == "Start analysis").click().run()
    args = only_job()["args"]
    assert args[args.index("--model") + 1] == model and args[args.index("--data") + 1] == str(data)


def test_analysis_form_rejects_bad_files_and_options(cache, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{not json\n')
    at = open_page()
    at.radio[1].set_value("local file").run()
    at.text_input[0].input(str(bad)).run()
    assert "bad JSON on line 2" in text_of(at)
    assert next(b for b in at.button if b.label == "Start analysis").disabled
    at.radio[1].set_value("embedded set").run()
    max_samples = next(t for t in at.text_input if t.label == "--max-samples")
    max_samples.input("many").run()
    assert "'many' is not valid" in text_of(at)
    assert next(b for b in at.button if b.label == "Start analysis").disabled


def test_stability_checkbox_adds_the_ratios(cache):
    at = open_page()
    next(c for c in at.checkbox if c.label.startswith("Also the stability")).check().run()
    assert "--ratios 1.0,0.7,0.3" in at.code[-1].value


# --------------------------------------------------------------------------- analysis pages
def test_heatmap_rows_runs_columns_layers_dots_on_top_k(cache, model):
    deep = fx.make_score_run(cache, model, n_layers=6, seed=1)
    shallow = fx.make_score_run(cache, model, n_layers=4, seed=2)
    at = open_page(PAGES[0])
    fig = figure(at)
    heat, dots = fig["data"][0], fig["data"][1]
    assert len(heat["z"]) == 2 and len(heat["z"][0]) == 6  # a column per layer of the deepest
    assert len(dots["x"]) == 2 * 4  # top-min(5, 4) of each run
    at.slider[0].set_value(2).run()
    dots = figure(at)["data"][1]
    expected = {(common.run_label(r), float(k)) for r in (deep, shallow) for k in common.layers(r)["ranking"][:2]}
    assert set(zip(dots["y"], dots["x"])) == expected
    at.radio[0].set_value("relative depth").run()
    heat = figure(at)["data"][0]
    assert not any(math.isnan(v) for v in heat["z"][1])  # the 4-layer run fills every depth bin
    assert len(at.get("plotly_chart")) == 3  # heatmap, head masks, neuron masks


def test_heatmap_drill_down_shows_the_layer_masks(cache, model):
    run = fx.make_score_run(cache, model)
    at = open_page(PAGES[0])
    at.select_slider[0].set_value(2).run()
    heads = figure(at, 1)["data"][0]
    assert heads["y"] == ["greedy", "refined", "tuned"] and len(heads["z"][0]) == 4
    assert f"rank **{common.layers(run)['ranking'].index(2) + 1}**" in text_of(at)
    stats = at.dataframe[0].value
    assert list(stats["units"]) == ["heads", "neurons"] and stats["count"].tolist() == [4, 48]


def test_a_corrupt_run_is_reported_not_raised(cache, model):
    run = fx.make_score_run(cache, model)
    run.file("layers.json").write_text("{}")
    at = open_page(PAGES[0])
    assert "does not match its checksum" in text_of(at)
    assert "No finished analysis yet" in text_of(at)


def test_stability_page_shows_both_variants_of_a_study(cache, model):
    fx.make_study_run(cache, model, n_layers=6, n_neurons=20)
    at = open_page(PAGES[1])
    fig = figure(at)
    assert [a["text"] for a in fig["layout"]["annotations"]] == ["with refinement", "without refinement"]
    names = {t["name"] for t in fig["data"]}
    assert {"100% data", "70% data", "30% data", "min-max"} <= names
    summary = at.dataframe[0].value
    assert list(summary["variant"]) == ["with refinement", "without refinement"]
    # The score runs of the study also form a ratio group: two sources.
    assert len(at.selectbox[0].options) == 2


def test_refinement_page_names_the_k_to_evaluate_and_starts_compare(cache, model):
    run = fx.make_score_run(cache, model)
    payload = common.layers(run)
    ks = refinement.differing_ks(payload["ranking"], payload["ranking_without_refinement"])
    assert ks == [2]  # the fixture swaps ranks 2 and 3
    at = open_page(PAGES[2])
    assert next(m for m in at.metric if m.label == "k to evaluate").value == "1"
    assert "k = 2" in text_of(at)
    next(b for b in at.button if b.label == "Start the comparison").click().run()
    args = only_job()["args"]
    assert args[:3] == ["compare", "--score-run", run.id]
    assert args[args.index("--ks") + 1] == "2" and "--no-include-all" in args
    assert args[args.index("--policies") + 1] == "floe,floe-no-refine"


def test_compare_page_shows_compare_results(cache, model):
    """The evaluation per k (the paper's Table 7) has its own page: every policy against FLoE."""
    run = fx.make_score_run(cache, model)
    fx.make_compare_run(cache, run)
    at = open_page("pages/7_Compare.py")
    table = at.dataframe[0].value
    assert list(table["policy"]) == ["FLoE (with refinement)", "FLoE without refinement"] * 2
    assert list(table["k"]) == [3, 3, 2, 2]
    row = table[(table["k"] == 2) & (table["policy"] == "FLoE without refinement")].iloc[0]
    assert row["mean"] == "2.0100" and row["95 % interval"] == "[+0.0000, +1.0000]"
    # The paired difference against FLoE, signed, with its interval and verdict.
    assert row["minus floe"] == "+0.0100" and row["verdict"] == "no difference the seeds support"
    assert "lower is better" in text_of(at)


def test_rank_search_page_shows_the_study_and_starts_a_search(cache, model):
    run = fx.make_score_run(cache, model)
    fx.make_search_run(cache, run)
    at = open_page(PAGES[3])
    assert next(m for m in at.metric if m.label == "best r").value == "6"
    history, slice_ = figure(at, 0), figure(at, 1)
    assert len(history["data"][0]["x"]) == 4 and history["data"][2]["name"] == "pruned"
    assert sorted(slice_["data"][0]["x"]) == [2, 4, 6, 8]
    at.slider[0].set_value(3).run()
    next(b for b in at.button if b.label == "Start / resume the search").click().run()
    args = only_job()["args"]
    assert args[:7] == ["search-rank", "--score-run", run.id, "--policy", "floe", "--k", "3"]
    assert args[args.index("--n-trials") + 1] == "5"


def test_train_page_k_slider_policy_training_and_downloads(cache, model):
    run = fx.make_score_run(cache, model)
    train = fx.make_train_run(cache, run, "floe", 2)
    fx.make_eval_run(cache, train)
    at = open_page(PAGES[4])
    at.slider[0].set_value(2).run()
    chosen = training.chosen_layers(run, "floe", 2)
    assert f"**Adapted layers (2):** {', '.join(map(str, chosen))}" in text_of(at)
    dots = figure(at)["data"][1]
    assert sorted(dots["x"]) == chosen
    params = next(m for m in at.metric if m.label == "trainable parameters").value
    assert int(params.replace(",", "")) == training.trainable_parameters(run, chosen) > 0
    assert next(m for m in at.metric if m.label == "expected training memory").value.startswith("≈")
    loss = figure(at, 1)["data"][0]
    assert loss["y"][0] == 3.0 and len(loss["x"]) == 6
    evals = at.dataframe[-1].value
    assert evals["arc-easy/acc"].item() == 0.4
    labels = [b.label for b in at.get("download_button")]
    assert labels[0] == "Layer list (JSON)" and "config.yaml" in labels and "adapter.zip" in labels
    next(b for b in at.button if b.label == "Start sparse training").click().run()
    args = only_job()["args"]
    assert args[:7] == ["train", "--score-run", run.id, "--policy", "floe", "--k", "2"]
    # Beyond the choice, only the analysis's sample settings where they differ from the CLI's.
    preset = common.training_preset(run)
    assert all(preset[flag[2:].replace("-", "_")] == value for flag, value in zip(args[7::2], args[8::2]))


def test_train_page_policy_all_adapts_every_layer(cache, model):
    fx.make_score_run(cache, model)
    at = open_page(PAGES[4])
    at.radio[0].set_value("all").run()
    assert at.slider[0].disabled
    assert "**Adapted layers (4):** 0, 1, 2, 3" in text_of(at)
    assert "No training run for this choice yet" in text_of(at)


def test_a_failed_job_shows_its_message_and_can_be_resumed(cache):
    job = jobs.submit(jobs.floe_command(["analyze"]), "analyse broken", ["analyze", "--data", "x.csv"])
    jobs.update_job(job["id"], None, status=jobs.FAILED, error="floe analyze: error: data file x.csv does not exist")
    at = open_page()
    assert [e.value for e in at.error] == ["floe analyze: error: data file x\\.csv does not exist"]
    assert at.button(key=f"resume:{job['id']}").label == "Resume"
    at.button(key=f"resume:{job['id']}").click().run()
    assert jobs.get(job["id"])["status"] == jobs.QUEUED
    at.button(key=f"cancel:{job['id']}").click().run()
    assert jobs.get(job["id"])["status"] == jobs.CANCELLED
    at.button(key=f"dismiss:{job['id']}").click().run()
    assert jobs.list_jobs() == []


@pytest.mark.parametrize("page", [PAGES[0], PAGES[3], PAGES[4]])
def test_a_one_layer_model_has_no_k_to_choose(cache, tmp_path, page):
    folder = fx.make_model_folder(tmp_path / "one-layer", n_layers=1)
    fx.make_score_run(cache, str(folder), n_layers=1)
    at = open_page(page)
    assert not [s for s in at.slider if s.label.startswith(("k:", "Top-k"))]
    assert "(the model has one layer)" in text_of(at)
