"""floe runs pack / unpack (floe.store.archive): finished runs carried to another cache, intact,
and nothing an archive holds written unless every run of it checks out."""
from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import app_fixtures as fx
import pytest

from floe.cli import main
from floe.store.archive import ArchiveError, inputs_of, pack_runs, unpack_runs
from floe.store.runs import DONE, cache_root, health, open_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def analysis(cache, tiny_model_dir):
    """A finished score run and its warm-up, the warm-up with a leftover resume checkpoint."""
    score = fx.make_score_run(None, str(tiny_model_dir))
    warm = open_run(score.config["warmup_run"])
    (warm.path / "checkpoint").mkdir()
    (warm.path / "checkpoint" / "optimizer-4.pt").write_bytes(b"a pickle")
    return score, warm


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def archive_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def members_of(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_a_packed_analysis_unpacks_intact_in_another_cache(analysis, tmp_path):
    score, warm = analysis
    assert inputs_of(score) == [warm.id]
    packed = pack_runs([score.id], tmp_path / "a.tar.gz", with_inputs=True)
    assert packed == sorted([score.id, warm.id])
    other = tmp_path / "other"
    assert unpack_runs(tmp_path / "a.tar.gz", root=other) == {
        "added": packed, "replaced": [], "kept": [], "busy": []}
    for run in (score, warm):
        copy = open_run(run.id, other)
        assert health(copy) == DONE
        assert files_of(copy.path) == {k: v for k, v in files_of(run.path).items()
                                       if not k.startswith("checkpoint") and k != ".lock"}
    assert not (other / "runs" / warm.id / "checkpoint").exists()  # resume pickles stay home
    # A second unpack keeps what is there; packing again writes the same bytes.
    assert unpack_runs(tmp_path / "a.tar.gz", root=other)["kept"] == packed
    pack_runs([score.id], tmp_path / "b.tar.gz", with_inputs=True)
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert not list(tmp_path.glob(".*.tmp")) and not list(other.glob(".unpack-*"))  # no temp left


def test_an_unfinished_run_in_the_cache_is_replaced_and_one_is_not_packed(analysis, tmp_path):
    score, _ = analysis
    pack_runs([score.id], tmp_path / "a.tar.gz")
    score.update_state(status="failed", error="killed")
    with pytest.raises(ArchiveError, match="is failed: only finished"):
        pack_runs([score.id], tmp_path / "b.tar.gz")
    assert not (tmp_path / "b.tar.gz").exists()
    assert unpack_runs(tmp_path / "a.tar.gz")["replaced"] == [score.id]
    assert health(score) == DONE
    (score.path / "notes.pkl").write_bytes(b"a pickle")  # packed, unpack would refuse it all
    with pytest.raises(ArchiveError, match="notes.pkl is not a data file"):
        pack_runs([score.id], tmp_path / "b.tar.gz")


@pytest.mark.parametrize("tamper, message", [
    (lambda m, run: m.__setitem__(f"runs/{run}/layers.json", b'{"edited": 1}'), "does not match its checksum"),
    (lambda m, run: m.update({k.replace(run, "score-0123456789ab"): m.pop(k) for k in list(m)}),
     "does not hash to its id"),
    (lambda m, run: m.__setitem__(f"runs/{run}/../../evil.json", b"{}"), "hidden or climbing"),
    (lambda m, run: m.__setitem__(f"runs/{run}/model.pt", b"pickle"), "file type"),
    (lambda m, run: m.__setitem__("evil.json", b"{}"), "not a file of a run"),
    (lambda m, run: m.pop(f"runs/{run}/layers.json"), "is missing"),
], ids=["edited", "renamed", "climbing", "pickle", "stray", "missing"])
def test_a_damaged_or_hostile_archive_writes_nothing(analysis, tmp_path, tamper, message):
    score, _ = analysis
    pack_runs([score.id], tmp_path / "a.tar.gz")
    members = members_of(tmp_path / "a.tar.gz")
    tamper(members, score.id)
    bad = archive_with(tmp_path / "bad.tar.gz", members)
    other = tmp_path / "other"
    with pytest.raises(ArchiveError, match=message):
        unpack_runs(bad, root=other)
    assert not (other / "runs").exists() or not any((other / "runs").iterdir())
    assert [p.name for p in other.iterdir()] in ([], ["runs"])  # the staging folder is gone too


def test_a_link_in_an_archive_is_refused(tmp_path):
    path = tmp_path / "link.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("runs/score-0123456789ab/config.json")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ArchiveError, match="not a plain file"):
        unpack_runs(path, root=tmp_path / "other")


def test_the_cli_packs_and_unpacks_with_one_line_errors(analysis, tmp_path, capsys):
    score, warm = analysis
    archive = str(tmp_path / "a.tar.gz")
    assert main(["runs", "pack", score.id, "--with-inputs", "--archive", archive, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 2
    score.delete()
    warm.delete()
    assert main(["runs", "unpack", "--archive", archive, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"]["added"] == sorted([score.id, warm.id])
    assert health(open_run(score.id)) == DONE and cache_root() == score.path.parent.parent
    (tmp_path / "junk.tar.gz").write_text("not an archive")
    for args, error in [(["pack", score.id], "needs --archive"),
                        (["pack", "--archive", archive], "say which runs"),
                        (["pack", "score-nope", "--archive", archive], "no run 'score-nope'"),
                        (["pack", score.id, "--archive", str(tmp_path / "a.zip")], "is a .tar.gz file"),
                        (["pack", score.id, "--archive", str(tmp_path / "no" / "a.tar.gz")], "no such folder"),
                        (["unpack", "--archive", str(tmp_path / "none.tar.gz")], "no such archive"),
                        (["unpack", "--archive", str(tmp_path / "junk.tar.gz")], "not a readable"),
                        (["unpack", score.id, "--archive", archive], "takes no run ids")]:
        assert main(["runs", *args]) != 0
        err = capsys.readouterr().err
        assert error in err and "Traceback" not in err, (args, err)


def test_the_budget_study_keeps_its_small_runs_and_summaries_for_a_fresh_machine(analysis, tmp_path, monkeypatch):
    """bench/study_archive.sh: save packs the score (probe, compare) runs, not the warm-ups'
    weights, and the study's summaries; restore on an empty cache brings both back."""
    score, warm = analysis
    for run, seconds in ((score, 5.0), (warm, 30.0)):  # the fixtures do not go through Run.hold
        run.update_state(started=run.state["finished"] - seconds)
    keep, out = tmp_path / "keep", tmp_path / "out"
    out.mkdir()
    (out / "analyze-tiny-64.json").write_text(json.dumps({"run": score.id}))
    env = {**os.environ, "STUDY_KEEP": str(keep), "STUDY_OUT": str(out)}
    script = ["bash", "bench/study_archive.sh"]
    subprocess.run([*script, "save"], cwd=ROOT, env=env, check=True, capture_output=True)
    assert [p.name for p in (keep / "runs").iterdir()] == [f"{score.id}.tar.gz"]
    kept = json.loads((keep / "runs.json").read_text())
    assert {run: facts["seconds"] for run, facts in kept.items()} == pytest.approx({score.id: 5.0, warm.id: 30.0})
    assert kept[warm.id]["warmup"] == warm.read_json("warmup.json") and "warmup" not in kept[score.id]
    # A run that changes after it was kept (a probe given its set search) is packed again.
    packed = (keep / "runs" / f"{score.id}.tar.gz").read_bytes()
    time.sleep(0.01)
    score.update_state(started=score.state["started"] - 1.0)
    subprocess.run([*script, "save"], cwd=ROOT, env=env, check=True, capture_output=True)
    assert (keep / "runs" / f"{score.id}.tar.gz").read_bytes() != packed
    fresh = tmp_path / "fresh"
    env.update(FLOE_CACHE=str(fresh), STUDY_OUT=str(tmp_path / "out2"))
    subprocess.run([*script, "restore"], cwd=ROOT, env=env, check=True, capture_output=True)
    assert health(open_run(score.id, fresh)) == DONE and not (fresh / "runs" / warm.id).exists()
    assert json.loads((tmp_path / "out2" / "analyze-tiny-64.json").read_text()) == {"run": score.id}
    # The reports read the warm-up's time and summary from what was kept, its run gone.
    from bench.report_results import active_seconds, warmup_summary
    monkeypatch.setenv("FLOE_CACHE", str(fresh))
    assert active_seconds(warm.id, keep / "runs.json") == pytest.approx(30.0)
    assert warmup_summary(warm.id, keep / "runs.json") == kept[warm.id]["warmup"]
    with pytest.raises(FileNotFoundError, match="nor its seconds"):
        active_seconds("warmup-0123456789ab", keep / "runs.json")
