"""Reliability defects (issue 11): stale results, tracebacks, repair with --force, the runs
command, copies of user data, validation, export safety, remote code, the browser skip.
Each test failed on floe 0.2.0 as released."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import tiny_configs

from floe.cli import main
from floe.pipeline.data import DataConfig, DataError, load_file_examples
from floe.store.runs import list_runs


def run_folders(root: Path) -> list[str]:
    folder = root / "runs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def cli(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def one_line_error(err: str) -> str:
    """The one error line (progress bars of model loading may precede it)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("floe ") and ": error: " in ln]
    assert len(lines) == 1, err
    return lines[0]


def write_rows(path: Path, n: int = 30) -> Path:
    path.write_text("\n".join(json.dumps({"instruction": f"What is {i} plus 1?", "output": f"{i + 1}."})
                              for i in range(n)))
    return path


# --------------------------------------------------------------------------- 1. stale results
def test_an_edited_data_file_is_another_run(tmp_path, tiny_model_dir):
    import dataclasses

    from floe.pipeline.sparse import SparseConfig, train_key
    from floe.pipeline.warmup import warmup_run
    data = write_rows(tmp_path / "data.jsonl")
    setup = tiny_configs(tiny_model_dir, str(data))
    setup = setup.replace(adapter=dataclasses.replace(setup.adapter, layers=[0]))
    before = warmup_run(setup).id
    train_before = train_key(setup, SparseConfig(layers=[0]))
    with open(data, "a") as f:
        f.write("\n" + json.dumps({"instruction": "one more", "output": "row"}))
    assert warmup_run(setup).id != before
    assert train_key(setup, SparseConfig(layers=[0])) != train_before


def test_the_same_file_name_in_another_folder_is_another_run(tmp_path, tiny_model_dir, monkeypatch):
    from floe.pipeline.warmup import warmup_run
    ids = []
    for folder, n in (("a", 30), ("b", 31)):
        (tmp_path / folder).mkdir()
        write_rows(tmp_path / folder / "data.jsonl", n)
        monkeypatch.chdir(tmp_path / folder)
        ids.append(warmup_run(tiny_configs(tiny_model_dir, "data.jsonl")).id)
    assert ids[0] != ids[1]


def test_a_run_never_reads_a_file_that_changed_since(tmp_path):
    from floe.pipeline.data import data_config, data_key
    data = write_rows(tmp_path / "data.jsonl")
    key = data_key(DataConfig(data=str(data)))
    assert key["data"] == str(data.resolve()) and key["file"]["size"] == data.stat().st_size
    assert data_config(key).data == str(data.resolve())
    write_rows(data, 31)
    with pytest.raises(DataError, match="has changed since the run was computed"):
        data_config(key)


def test_embedded_sets_keep_their_keys():
    from floe.pipeline.data import data_key
    assert data_key(DataConfig()) == {"data": "general", "ratio": 1.0, "max_samples": 64,
                                      "val_samples": 16, "max_length": 128, "seed": 42}


# --------------------------------------------------------------------------- 3. tracebacks
def test_a_truncated_checkpoint_is_reported_and_force_repairs_it(cache, capsys, tiny_args):
    args = ["warmup", *tiny_args, "--max-steps", "2", "--checkpoint-every", "1"]
    assert cli(capsys, *args)[0] == 0
    (run,) = list_runs()
    run.update_state(status="running")  # killed: stale, resumes from its checkpoint
    weights = run.file("checkpoint") / run.read_json("checkpoint/step.json")["files"]["trainable"]
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = cli(capsys, *args)
    assert code == 2 and "damaged or truncated" in one_line_error(err)
    assert cli(capsys, *args, "--force")[0] == 0 and run.status == "done"


def test_a_truncated_adapter_is_reported_by_eval(cache, capsys, trained_run, tiny_model_dir, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained_run.file("adapter"), adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    code, err = cli(capsys, "eval", "--adapter", str(adapter), "--model", str(tiny_model_dir),
                    "--tasks", "arc-easy", "--limit", "2", "--no-val-loss", "--device", "cpu", "--quiet")
    assert code == 2 and "damaged or truncated" in one_line_error(err)
    assert run_folders(cache) == []  # and no failed eval run left behind


@pytest.mark.parametrize("messages, expected", [
    ([{"role": "user"}, {"role": "assistant", "content": "a"}], "turn 1 of 'messages' needs"),
    ("user: hi", "must be a list"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": ["a"]}], "turn 2"),
])
def test_bad_chat_messages_are_a_data_error(tmp_path, messages, expected):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages}))
    with pytest.raises(DataError, match=expected):
        load_file_examples(path)


# --------------------------------------------------------------------------- 4. repair
def test_force_repairs_a_corrupt_state_and_config(cache, capsys, tiny_args):
    args = ["warmup", *tiny_args, "--max-steps", "1"]
    assert cli(capsys, *args)[0] == 0
    (run,) = list_runs()
    run.file("state.json").write_text('{"status": "do')
    code, err = cli(capsys, *args)
    assert code == 2 and "--force" in one_line_error(err)
    assert cli(capsys, *args, "--force")[0] == 0 and run.status == "done"
    run.file("config.json").write_text("{")
    assert cli(capsys, *args)[0] == 0 and run.config["kind"] == "warmup"  # rewritten from its key


def test_force_repairs_a_corrupt_train_run(cache, capsys, tiny_args):
    args = ["train", *tiny_args, "--layers", "0,1", "--max-steps", "1"]
    assert cli(capsys, *args)[0] == 0
    (run,) = list_runs()
    run.file("state.json").write_bytes(b"\x00" * 10)
    assert cli(capsys, *args)[0] == 2
    assert cli(capsys, *args, "--force")[0] == 0 and run.status == "done"


def test_runs_list_delete_and_gc(cache, capsys):
    from floe.store.runs import run_for
    runs = {name: run_for("fake", {"name": name}) for name in
            ("done", "failed", "stale", "cancelled", "bad-state", "bad-config", "bad-artifact")}
    for name in ("done", "bad-artifact"):
        runs[name].write_json("out.json", {"x": 1})
        runs[name].finish(["out.json"])
    runs["bad-artifact"].write_json("out.json", {"x": 2})
    runs["failed"].update_state(status="failed", error="ValueError: typo")
    runs["stale"].update_state(status="running", pid=1)  # nobody holds its lock
    runs["cancelled"].update_state(status="cancelled")
    runs["bad-state"].file("state.json").write_text("{")
    runs["bad-config"].file("config.json").write_text("")
    (cache / "runs" / "fake-nocfg").mkdir()
    code = main(["runs", "list", "--json"])
    listed = {r["run"]: r["status"] for r in json.loads(capsys.readouterr().out)["runs"]}
    assert code == 0 and listed[runs["bad-state"].id] == "corrupt" and listed[runs["stale"].id] == "stale"
    assert listed["fake-nocfg"] == "corrupt" and listed[runs["bad-artifact"].id] == "corrupt"
    assert main(["runs", "gc", "--dry-run"]) == 0 and len(run_folders(cache)) == 8
    capsys.readouterr()
    assert main(["runs", "gc"]) == 0
    assert run_folders(cache) == sorted([runs["done"].id, runs["cancelled"].id])
    assert main(["runs", "delete", runs["done"].id]) == 0
    assert run_folders(cache) == [runs["cancelled"].id]
    code, err = cli(capsys, "runs", "delete", "warmup-nosuchrun")
    assert code == 2 and "no run" in one_line_error(err)


# --------------------------------------------------------------------------- 5. user data copies
def test_user_files_leave_no_copy_in_the_datasets_cache(tmp_path, monkeypatch):
    import datasets
    import pandas as pd
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        assert len(load_file_examples(tmp_path / name)) == 4
    assert not (tmp_path / "hf-cache").exists() or not any((tmp_path / "hf-cache").rglob("*"))


# --------------------------------------------------------------------------- 6. validation
@pytest.mark.parametrize("option, value, message", [
    ("--max-steps", "-1", "max_steps"), ("--alpha", "0", "alpha must be > 0"),
    ("--checkpoint-every", "-1", "checkpoint_every"), ("--seed", "-1", "seed must be"),
    ("--device", "foo", "--device 'foo'"), ("--damping", "-1", "damping >= 0"), ("--bound", "0", "bound > 0"),
])
def test_bad_options_fail_before_any_work(cache, capsys, tiny_args, option, value, message):
    code, err = cli(capsys, "analyze", *tiny_args, option, value)
    assert code == 2 and message in one_line_error(err)
    assert run_folders(cache) == []


def test_an_early_error_leaves_no_failed_run(cache, capsys, tiny_model_dir, tmp_path):
    few = write_rows(tmp_path / "few.jsonl", 5)
    code, err = cli(capsys, "warmup", "--model", str(tiny_model_dir), "--data", str(few), "--quiet")
    assert code == 2 and "fewer than" in one_line_error(err)
    assert run_folders(cache) == []


def test_a_directory_as_data_and_a_file_as_model_say_so(cache, capsys, tiny_model_dir, tiny_args, qa_file):
    code, err = cli(capsys, "warmup", *tiny_args, "--data", str(tiny_model_dir))
    assert code == 2 and "is a directory" in one_line_error(err)
    code, err = cli(capsys, "warmup", *tiny_args, "--model", qa_file)
    assert code == 2 and "is a file; --model takes a model folder" in one_line_error(err)


def test_non_text_parquet_columns_warn(tmp_path):
    import pandas as pd

    from floe.pipeline.data import DataWarning
    pd.DataFrame({"instruction": ["q1", "q2"], "output": [1, 2]}).to_parquet(tmp_path / "n.parquet")
    with pytest.warns(DataWarning, match=r"output \(int\)"):
        examples = load_file_examples(tmp_path / "n.parquet")
    assert examples[0]["response"] == "1"


def test_a_semicolon_csv_gets_a_hint(tmp_path):
    (tmp_path / "s.csv").write_text("instruction;output\nq;a\n")
    with pytest.raises(DataError, match="looks ';'-separated"):
        load_file_examples(tmp_path / "s.csv")


# --------------------------------------------------------------------------- 7. export
def test_export_keeps_a_foreign_tmp_sibling(trained_run, tmp_path):
    from floe.pipeline.export import export
    foreign = tmp_path / ".mine.tmp"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    export(trained_run.id, tmp_path / "mine")
    assert (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mine.tmp", "mine"]


def test_force_export_replaces_the_old_one_only_once_the_new_is_built(trained_run, tmp_path, monkeypatch):
    from floe.pipeline import export as ex
    target = ex.export(trained_run.id, tmp_path / "e")
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ex, "lora_config", broken)
    with pytest.raises(OSError, match="disk full"):
        ex.export(trained_run.id, target, force=True)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no temp folder left either
    monkeypatch.undo()
    ex.export(trained_run.id, target, force=True)
    assert (target / "floe_export.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


# --------------------------------------------------------------------------- 8. remote code
def test_remote_code_is_offered_only_when_the_server_allows_it(monkeypatch):
    from floe.app import forms
    monkeypatch.delenv("FLOE_ALLOW_REMOTE_CODE", raising=False)
    assert "trust_remote_code" not in {o.dest for o in forms.form_options("analyze")}
    assert "--trust-remote-code" not in forms.cli_args(forms.form_options("analyze"),
                                                       {"trust_remote_code": True})
    monkeypatch.setenv("FLOE_ALLOW_REMOTE_CODE", "1")
    assert "trust_remote_code" in {o.dest for o in forms.form_options("analyze")}
    assert "--allow-remote-code" in Path("scripts/app.sh").read_text()


# --------------------------------------------------------------------------- 9. browser test
def test_the_browser_test_skips_without_chromium_unless_required(monkeypatch):
    import test_browser
    monkeypatch.setattr(test_browser, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("FLOE_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="FLOE_REQUIRE_BROWSER=1"):
        test_browser.require_chromium()
    monkeypatch.setenv("FLOE_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception):
        test_browser.require_chromium()
    assert "FLOE_REQUIRE_BROWSER=1" in Path(".ci/run").read_text()

