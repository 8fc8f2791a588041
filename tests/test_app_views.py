"""floe.app's view models: the data behind the pages, checked against the core and the run files."""
from __future__ import annotations

import time

import app_fixtures as fx
import numpy as np
import pytest
from helpers import tiny_model

from floe.app import common, forms, heatmaps, pickers, refinement, runs, stability, training
from floe.app import widgets as ui
from floe.store import jobs
from floe.store.runs import list_runs, run_for


@pytest.fixture
def model(cache):
    return str(fx.make_model_folder(cache / "tiny-model"))


def test_differing_ks_are_the_k_whose_top_sets_differ():
    assert refinement.differing_ks([0, 1, 2, 3], [0, 2, 1, 3]) == [2]
    assert refinement.differing_ks([3, 0, 1, 2], [0, 3, 2, 1]) == [1, 3]
    assert refinement.differing_ks([0, 1, 2], [0, 1, 2]) == []


def test_refinement_moves_read_both_rankings(cache, model):
    payload = common.layers(fx.make_score_run(cache, model))
    moves = refinement.refinement_moves(payload)
    assert list(moves["layer"]) == payload["ranking"]
    moved = moves[moves["moved up by"] != 0]
    assert sorted(moved["moved up by"]) == [-1, 1]  # the fixture swaps one pair


def test_heatmap_aligns_models_of_different_depth_by_relative_depth(cache, model):
    deep = fx.make_score_run(cache, model, n_layers=8, seed=1)
    shallow = fx.make_score_run(cache, model, n_layers=4, seed=2)
    by_index = heatmaps.heatmap_data([deep, shallow], align="index")
    assert by_index["z"].shape == (2, 8) and np.isnan(by_index["z"][1, 4:]).all()
    rel = heatmaps.heatmap_data([deep, shallow], align="relative")
    layers_drawn = [int(k) for k in rel["custom"][1, :, 0]]
    assert layers_drawn == [0, 0, 1, 1, 2, 2, 3, 3]
    scores = common.layers(shallow)["layer_scores"]
    assert np.allclose(rel["z"][1], [scores[k] for k in layers_drawn])
    # Dots sit at the layer's relative centre; hover carries its rank and components.
    fig = heatmaps.heatmap_figure([deep, shallow], align="relative", k=2)
    dots = fig.data[1]
    top = common.layers(shallow)["ranking"][:2]
    assert sorted(x for x, y in zip(dots.x, dots.y) if y == common.run_label(shallow)) == \
        pytest.approx(sorted((k + 0.5) / 4 for k in top))
    rank_of_first = common.layers(deep)["ranking"].index(0) + 1
    assert rel["custom"][0, 0, 1] == rank_of_first


def test_normalised_rows_span_zero_to_one(cache, model):
    run = fx.make_score_run(cache, model, n_layers=6)
    z = heatmaps.heatmap_data([run], normalise=True)["z"][0]
    assert z.min() == 0 and z.max() == 1


def test_mask_figures_sort_units_by_fisher(cache, model):
    run = fx.make_score_run(cache, model)
    heads, neurons, stats = heatmaps.mask_figures(run, 1)
    from safetensors.numpy import load_file
    units = load_file(str(run.file("units.safetensors")))
    order = np.argsort(-units["tau_neurons"][1], kind="stable")
    assert np.array_equal(np.asarray(neurons.data[0].z)[1], units["refined_neurons"][1][order])
    assert stats.loc[1, "kept (greedy)"] == int(units["greedy_neurons"][1].sum())


def test_trainable_parameters_match_hydralora_on_the_model(cache):
    from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora, trainable_parameters
    run = fx.make_score_run(cache, "m", n_layers=3, hidden=32, n_neurons=48)
    for r, layers in ((8, [0, 2]), (4, [1])):
        net = tiny_model("llama")
        apply_hydralora(net, HydraLoraConfig(r=r, layers=layers))
        assert training.trainable_parameters(run, layers, r=r) == trainable_parameters(net)


def test_memory_estimate_grows_with_the_depth_backward_reaches(cache, model):
    run = fx.make_score_run(cache, model)
    high = training.memory_estimate(run, [3], 100, cuda=False)
    low = training.memory_estimate(run, [0], 100, cuda=False)
    assert low["activations"] > 2 * high["activations"] and low["weights"] == high["weights"]
    assert high["total"] == pytest.approx(sum(v for k, v in high.items() if k != "total"))
    assert training.memory_estimate(run, [0], 100, cuda=True)["weights"] == low["weights"] / 2
    # The one formula: what `floe plan` prints for the same model, batch, length and layers.
    from floe.models.memory import GIB, training_memory
    warm = run.config["warmup"]
    plan = training_memory(training.model_facts(model), warm["train"]["batch_size"] * warm["data"]["max_length"],
                           [0], warm["adapter"]["r"], warm["adapter"]["experts"], warm["adapter"]["targets"], 4,
                           trainable=100)
    assert low["total"] == pytest.approx(plan.peak / GIB)


def test_stability_from_a_study_and_from_ratio_groups(cache, model):
    study, runs = fx.make_study_run(cache, model, n_layers=5)
    sources = stability.stability_sources()
    assert len(sources) == 2  # the study, and its score runs grouped by ratio
    from_study = next(v for k, v in sources.items() if k.startswith("study"))
    from_group = next(v for k, v in sources.items() if k.startswith("score runs"))
    assert from_study["ranks"] == from_group["ranks"]
    table = stability.stability_table(from_study)
    ranks = np.array([from_study["ranks"][r] for r in ("1.0", "0.7", "0.3")])
    assert table[("with refinement", "spread")].tolist() == (ranks.max(0) - ranks.min(0)).tolist()
    summary = stability.stability_summary(from_study)
    assert summary.loc[0, "max rank spread"] == (ranks.max(0) - ranks.min(0)).max()


def test_a_different_seed_is_not_a_ratio_group(cache, model):
    fx.make_score_run(cache, model, ratio=1.0, seed=1)
    fx.make_score_run(cache, model, ratio=0.5, seed=2)
    assert stability.stability_sources() == {}


def test_upload_names_are_sanitised_and_sizes_checked(cache, monkeypatch):
    path = pickers.save_upload("../../etc/pass wd;rm.jsonl", b'{"instruction": "q", "output": "a"}\n')
    assert path.parent == cache / "uploads" and path.name.endswith("-pass_wd_rm.jsonl")
    assert pickers.save_upload("other.jsonl", b'{"instruction": "q", "output": "a"}\n').name[:12] == path.name[:12]
    with pytest.raises(ValueError, match="unsupported file type"):
        pickers.save_upload("data.exe", b"x")
    monkeypatch.setattr(pickers, "MAX_UPLOAD_MB", 0)
    with pytest.raises(ValueError, match="the limit is 0 MB"):
        pickers.save_upload("big.jsonl", b"x" * 10)


def test_user_text_is_inert_markdown():
    text = ui.md("[click](http://evil) ![img](x) **b** <b>_x_</b> `c`")
    assert "](" not in text.replace("\\]\\(", "") and "\\*\\*b\\*\\*" in text and "\\<b\\>" in text


def test_form_options_follow_the_cli_spec_and_args_carry_only_changes():
    options = forms.form_options("eval")
    by_dest = {o.dest: o for o in options}
    assert by_dest["limit"].text_default == "100" and by_dest["val_loss"].default is True
    assert by_dest["tasks"].text_default.startswith("mmlu,arc-easy")
    assert sorted(forms.cli_args(options, {"limit": "100", "val_loss": False, "tasks": "arc-easy"})) == \
        ["--no-val-loss", "--tasks", "arc-easy"]
    with pytest.raises(ValueError, match="--limit"):
        forms.cli_args(options, {"limit": "ten"})
    analyze = {o.dest for o in forms.form_options("analyze")}
    assert {"beta", "score_samples", "ratios", "max_samples"} <= analyze and "model" not in analyze
    assert set(ui.QUICK) <= analyze  # the one-click settings are real options


def test_progress_shows_fraction_and_eta():
    now = time.time()
    assert runs.progress_of([])["fraction"] is None
    step = {"event": "step", "stage": "warmup", "step": 3, "total_steps": 12, "loss": 2.5, "eta": 125.0, "time": now}
    p = runs.progress_of([step])
    assert p["fraction"] == 0.25 and p["eta"] == "2 min 05 s" and "step 3 of 12" in p["text"]
    records = [{"event": "stage", "stage": "fisher", "message": "fisher started", "time": now},
               {"event": "progress", "stage": "fisher", "done": 2, "total": 8, "time": now + 10}]
    p = runs.progress_of(records)
    assert p["fraction"] == 0.25 and p["eta"] == "30 s"  # 5 s per batch, 6 to go


def test_runs_table_describes_every_kind(cache, model):
    score = fx.make_score_run(cache, model, ratio=0.7, beta=0.3)
    train = fx.make_train_run(cache, score, "random", 2)
    fx.make_search_run(cache, score)
    table = runs.runs_table(list_runs()).set_index("kind")
    assert table.loc["score", "ratio"] == 0.7 and table.loc["score", "budget"] == 0.3
    assert table.loc["train", "detail"] == "random top-2, r 8" and table.loc["train", "model"] == "tiny-model"
    assert table.loc["ranksearch", "detail"] == "floe top-2, r in [2, 16]"
    assert training.train_runs_for(score, "random", 2) == [train] and training.train_runs_for(score, "floe", 2) == []


def test_job_view_of_a_failed_and_a_queued_job(cache, monkeypatch):
    monkeypatch.setattr(jobs, "_launch", lambda job, devices, root=None: job)
    monkeypatch.setenv("FLOE_DEVICE_SLOTS", "cpu")
    job = jobs.submit(jobs.floe_command(["analyze"]), "analyse x", ["analyze", "--model", "x"])
    view = runs.job_view(job)
    assert view["status"] == "queued" and view["command"] == "floe analyze --model x"
    failed = jobs.update_job(job["id"], None, status=jobs.FAILED, error="floe analyze: error: no such model")
    assert runs.job_view(failed)["error"] == "floe analyze: error: no such model"


def test_export_of_a_train_run_uses_the_core_exporter(cache, model):
    score = fx.make_score_run(cache, model)
    train = fx.make_train_run(cache, score, "floe", 2)
    files = training.export_downloads(training.export_folder(train))
    import yaml
    config = yaml.safe_load(files["config.yaml"])
    assert config["layers"] == training.chosen_layers(score, "floe", 2)
    assert set(files) == {"config.yaml", "peft_adapter_config.json", "adapter.zip", f"{train.id}.zip"}
    import io
    import zipfile
    assert "adapter/adapter_model.safetensors" in zipfile.ZipFile(io.BytesIO(files["adapter.zip"])).namelist()


def test_corrupt_score_runs_are_set_aside_with_their_message(cache, model):
    good = fx.make_score_run(cache, model, seed=1)
    bad = fx.make_score_run(cache, model, seed=2)
    bad.file("units.safetensors").write_bytes(b"broken")
    runs, problems = common.usable_score_runs()
    assert runs == [good] and "units.safetensors" in str(problems[bad.id])
    unfinished = run_for("score", {"x": 1})
    assert unfinished not in common.finished("score")


def test_a_score_runs_label_names_its_sample_size(cache):
    run = fx.make_score_run(cache, str(fx.make_model_folder(cache / "tiny-model")))
    assert " · general · 128 ex · 4 steps · 100% · β 0.5 · " in common.run_label(run)
