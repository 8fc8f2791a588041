"""Crash consistency, in the spirit of SQLite's and etcd's failure tests: every stage that
writes to the cache is SIGKILLed at seeded random points (a progress record of the stage,
or the middle of an atomic write: temp file written, not yet renamed), then the same
command runs again. Its artifacts must be byte-identical to an uninterrupted run's (CPU,
fixed seeds), or the run must be cleanly reported and repaired. Also the app's job
supervisor and the process that started a job are killed mid-job.

Kill points come from the ``FLOE_CRASH_AT`` hook of floe.store.runs; the points a stage
passes are listed by an uninterrupted run with ``FLOE_CRASH_TRACE``. Each ``floe`` command
runs in a forked child (a floe process without the seconds of imports a fresh interpreter
costs), which SIGKILLs itself at the chosen point. The figures are printed at the end
(``pytest -s -m crash``) and kept in test-output/crash.json.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import app_fixtures as fx
import pytest
from helpers import RANKINGS, default_warmup_key

from floe.store import jobs
from floe.store.runs import cache_root, list_runs

pytestmark = pytest.mark.crash

SEED = 11
ROOT = Path(__file__).resolve().parent.parent
RESULTS: list[dict] = []  # one per kill point of the tests that ran: stage, point, outcome


def by_stage(results: list[dict]) -> dict[str, dict]:
    """Kill points per stage and how many ended identical to an uninterrupted run."""
    out: dict[str, dict] = {}
    for r in results:
        s = out.setdefault(r["stage"], {"points": 0, "identical": 0, "other": 0})
        s["points"] += 1
        s["identical" if r["outcome"] == "identical" else "other"] += 1
    return out


@pytest.fixture(scope="module", autouse=True)
def crash_report():
    """The figures of whichever crash tests ran, in any order (each asserts its own points):
    written after the last of them to test-output/crash.json and printed (``-s``)."""
    RESULTS.clear()
    yield RESULTS
    if RESULTS:
        stages = by_stage(RESULTS)
        out = ROOT / "test-output"
        out.mkdir(exist_ok=True)
        (out / "crash.json").write_text(json.dumps({"stages": stages, "points": RESULTS}, indent=2))
        print("\ncrash suite:", json.dumps(stages, indent=1))


# A fresh interpreter per command: a fork of pytest would inherit torch's OpenMP thread
# pool, and libgomp is not fork-safe (the child can hang in its first parallel region).
RUNNER = "import sys; from floe.cli import main; sys.exit(main(sys.argv[1:]))"


def floe(cache: Path, *args: str, env: dict | None = None, timeout: float = 300) -> tuple[int, str]:
    """``floe ARGS`` in a child process over ``cache``; (exit status or -signal, stderr)."""
    argv = [*args, "--quiet"] if args[0] not in ("export", "runs") else list(args)
    child_env = {**os.environ, "FLOE_CACHE": str(cache), "PYTHONPATH": str(ROOT), **(env or {})}
    try:
        proc = subprocess.run([sys.executable, "-c", RUNNER, *argv], env=child_env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"floe {' '.join(args)} hung") from None
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stderr


def trace(cache: Path, *args: str) -> list[str]:
    """The crash points an uninterrupted run passes (it also is the reference run)."""
    path = cache / ".trace"
    path.unlink(missing_ok=True)
    code, err = floe(cache, *args, env={"FLOE_CRASH_TRACE": str(path)})
    assert code == 0, err
    points = path.read_text().splitlines()
    path.unlink()
    return points


def kill_points(points: list[str], stages: dict[str, int], writes: int, rng: random.Random) -> list[str]:
    """Seeded random FLOE_CRASH_AT values: ``n`` records of each stage, ``writes`` writes."""
    chosen = []
    for stage, n in stages.items():
        total = points.count(f"log:{stage}")
        chosen += [f"log:{stage}:{k}" for k in sorted(rng.sample(range(1, total + 1), min(n, total)))]
    total = points.count("write")
    chosen += [f"write:{k}" for k in sorted(rng.sample(range(1, total + 1), min(writes, total)))]
    return chosen


def digest(path: Path, drop: tuple[str, ...] = ()) -> dict:
    """Every file of a run or export folder, by content; JSON files without ``drop`` keys
    (times and resume counters, which say when, not what). Progress, state and locks are
    bookkeeping, not artifacts."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if not p.is_file() or p.name in ("state.json", "progress.jsonl", ".lock", "timings.json") \
                or p.name.endswith(".tmp") or rel.startswith("checkpoint/"):
            continue
        if p.suffix == ".json" and drop:
            out[rel] = _without(json.loads(p.read_text()), drop)
        else:
            out[rel] = p.read_bytes()
    return out


def _without(value, drop):
    if isinstance(value, dict):
        return {k: _without(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_without(v, drop) for v in value]
    return value


VOLATILE = ("seconds", "resumed_from", "peak_memory_bytes", "train_seconds", "wall_time_s", "elapsed")


def only_run(cache: Path, kind: str):
    (run,) = [r for r in list_runs(cache) if r.kind == kind]
    return run


def check_point(stage: str, point: str, cache: Path, command: tuple[str, ...], kind: str,
                reference: dict, drop=VOLATILE) -> None:
    """Kill ``command`` at ``point``, run it again, compare with the reference artifacts."""
    code, _ = floe(cache, *command, env={"FLOE_CRASH_AT": point})
    killed = code == -signal.SIGKILL
    code, err = floe(cache, *command)
    assert code == 0, f"{stage} {point}: the run again failed: {err}"
    run = only_run(cache, kind)
    assert run.status == "done"
    got = digest(run.path, drop)
    identical = got == reference
    RESULTS.append({"stage": stage, "point": point, "killed": killed,
                    "outcome": "identical" if identical else "different"})
    differ = sorted(k for k in {*got, *reference} if got.get(k) != reference.get(k))
    assert identical, (f"{stage}: after a kill at {point} these artifacts differ from an uninterrupted "
                       f"run's: {differ}: {[(got.get(k), reference.get(k)) for k in differ][:1]}")
    run.delete()  # the next kill point starts from the same state


@pytest.fixture(scope="module")
def crash_setup(tmp_path_factory, tiny_model_dir, qa_file):
    base = tmp_path_factory.mktemp("crash")
    common = ("--model", str(tiny_model_dir), "--data", qa_file, "--max-samples", "16",
              "--val-samples", "8", "--max-length", "48", "--batch-size", "4", "--device", "cpu")
    return base, common


def _cache(base: Path, name: str) -> Path:
    folder = base / name
    folder.mkdir()
    (folder / "models").symlink_to(cache_root() / "models", target_is_directory=True)
    return folder


def _copy_runs(source: Path, target: Path, kinds: tuple[str, ...]) -> None:
    for run in (source / "runs").iterdir():
        if run.name.split("-", 1)[0] in kinds:
            shutil.copytree(run, target / "runs" / run.name, ignore=shutil.ignore_patterns(".lock"))


WARMUP = ("--epochs", "2", "--checkpoint-every", "1", "--score-samples", "8", "--score-batch-size", "4")


@pytest.fixture(scope="module")
def warm_ref(crash_setup):
    """An uninterrupted warm-up (the warm-up's reference, and what scoring starts from)."""
    base, common = crash_setup
    ref = _cache(base, "ref")
    warm_cmd = ("warmup", *common, *WARMUP[:4])
    return ref, warm_cmd, trace(ref, *warm_cmd)


# One test per stage (not one per command chain): the test workers share them out.
def test_warmup_survives_kills(crash_setup, warm_ref):
    base, _ = crash_setup
    ref, warm_cmd, points = warm_ref
    reference = digest(only_run(ref, "warmup").path, VOLATILE)
    trials = _cache(base, "warmup")
    for point in kill_points(points, {"warmup": 2}, 1, random.Random(SEED)):
        check_point("warm-up", point, trials, warm_cmd, "warmup", reference)


def test_scoring_survives_kills(crash_setup, warm_ref):
    base, _ = crash_setup
    ref = warm_ref[0]
    warm = only_run(ref, "warmup").id
    score_cmd = ("score", "--warmup-run", warm, "--device", "cpu", *WARMUP[4:])
    points = trace(ref, *score_cmd)
    reference = digest(only_run(ref, "score").path, VOLATILE)
    trials = _cache(base, "score")
    _copy_runs(ref, trials, ("warmup",))
    for stage, point in [(p.split(":")[1] if p.startswith("log") else "score writes", p)
                         for p in kill_points(points, {"taylor": 1, "fisher": 1, "tune": 1}, 1,
                                              random.Random(SEED + 4))]:
        check_point({"taylor": "Taylor", "fisher": "Fisher", "tune": "tuning"}.get(stage, stage),
                    point, trials, score_cmd, "score", reference)


def test_training_and_export_survive_kills(crash_setup):
    base, common = crash_setup
    rng = random.Random(SEED + 1)
    ref = _cache(base, "ref2")
    train_cmd = ("train", *common, "--layers", "1,2", "--epochs", "2", "--checkpoint-every", "1")
    points = trace(ref, *train_cmd)
    reference = digest(only_run(ref, "train").path, VOLATILE)
    trials = _cache(base, "train")
    for point in kill_points(points, {"train": 2}, 1, rng):
        check_point("sparse training", point, trials, train_cmd, "train", reference)
    _check_export(base, ref, rng)


def test_rank_search_survives_kills(crash_setup):
    _check_rank_search(*crash_setup, random.Random(SEED + 2))


def test_compare_survives_kills(crash_setup):
    _check_compare(*crash_setup, random.Random(SEED + 3))


def _check_export(base: Path, ref: Path, rng: random.Random) -> None:
    train_run = only_run(ref, "train").id
    out = base / "exports"
    out.mkdir()
    cmd = ("export", "--train-run", train_run, "--to", str(out / "reference"))
    points = trace(ref, *cmd)
    reference = digest(out / "reference")
    for n, point in enumerate(kill_points(points, {}, 2, rng)):
        target = out / f"e{n}"
        code, _ = floe(ref, "export", "--train-run", train_run, "--to", str(target), env={"FLOE_CRASH_AT": point})
        assert code == -signal.SIGKILL and not target.exists()  # all or nothing
        assert floe(ref, "export", "--train-run", train_run, "--to", str(target))[0] == 0
        identical = digest(target) == reference
        # --force over an existing export, killed: the old export stays whole.
        code, _ = floe(ref, "export", "--train-run", train_run, "--to", str(target), "--force",
                       env={"FLOE_CRASH_AT": point})
        identical &= digest(target) == reference
        RESULTS.append({"stage": "export", "point": point, "killed": code == -signal.SIGKILL,
                        "outcome": "identical" if identical else "different"})
        assert identical


def _check_rank_search(base: Path, common: tuple, rng: random.Random) -> None:
    """A killed trial is marked failed and its rank retried; the study finishes with the
    wanted number of trials, each trial's training an intact cached run. The TPE sampler
    of a new process does not continue the old one's random stream, so later suggestions
    may differ: a resumed search is checked for consistency, not compared byte for byte."""
    cmd = ("search-rank", *common, "--layers", "1,2", "--max-steps", "3", "--n-trials", "3",
           "--r-min", "2", "--r-max", "6", "--startup-trials", "3", "--no-prune")
    ref = _cache(base, "ref-search")
    points = trace(ref, *cmd)
    reference = {r.config["adapter"]["r"]: digest(r.path, VOLATILE) for r in list_runs(ref) if r.kind == "train"}
    for n, point in enumerate(kill_points(points, {"train": 1}, 0, rng)):
        cache = _cache(base, f"search{n}")
        code, _ = floe(cache, *cmd, env={"FLOE_CRASH_AT": point})
        assert code == -signal.SIGKILL
        code, err = floe(cache, *cmd)
        assert code == 0, err
        search = only_run(cache, "ranksearch")
        summary = search.read_json("search.json")
        search.verify()
        assert summary["n_finished"] >= 3
        states = [t["state"] for t in summary["trials"]]
        assert states.count("FAIL") == 1  # the killed trial, reported, and its rank retried
        same = [digest(r.path, VOLATILE) == reference[r.config["adapter"]["r"]]
                for r in list_runs(cache) if r.kind == "train" and r.config["adapter"]["r"] in reference]
        assert all(same)
        RESULTS.append({"stage": "rank-search trial", "point": point, "killed": True,
                        "outcome": "reported and repaired", "trials_identical": f"{sum(same)}/{len(same)}"})


def _check_compare(base: Path, common: tuple, rng: random.Random) -> None:
    ref = _cache(base, "ref-compare")
    model = common[common.index("--model") + 1]
    score = fx.make_score_run(ref, model, rankings=RANKINGS, warmup=default_warmup_key(model)).id
    cmd = ("compare", "--score-run", score, *common, "--ks", "1", "--policies", "floe,random",
           "--seeds", "0,1", "--max-steps", "2", "--tasks", "arc-easy", "--limit", "4")
    points = trace(ref, *cmd)
    reference = digest(only_run(ref, "compare").path, VOLATILE)
    trials = _cache(base, "compare")
    _copy_runs(ref, trials, ("score",))
    for point in kill_points(points, {"compare": 1}, 1, rng):
        check_point("compare cell", point, trials, cmd, "compare", reference)
        for run in list_runs(trials):  # every cell computed again from scratch next time
            if run.kind != "score":
                run.delete()


def test_the_job_registry_recovers_from_killed_processes(tmp_path, monkeypatch, tiny_model_dir, qa_file):
    """SIGKILL the app's job supervisor mid-job: the registry settles the job as failed,
    stops its orphaned floe child and leaves the run stale; resuming the job finishes the
    run byte-identical to an uninterrupted one. SIGKILL the process that started a job
    (the Streamlit server): the job runs on and is recorded."""
    import subprocess
    monkeypatch.setenv("FLOE_DEVICE_SLOTS", "cpu")
    cache = _cache(tmp_path, "jobs")
    args = ["warmup", "--model", str(tiny_model_dir), "--data", qa_file, "--max-samples", "16",
            "--val-samples", "8", "--max-length", "48", "--batch-size", "1", "--epochs", "10",
            "--checkpoint-every", "5", "--device", "cpu"]
    ref = _cache(tmp_path, "jobs-ref")
    # The reference as the job runs it: a fresh interpreter with the same environment.
    subprocess.run(jobs.floe_command([*args, "--quiet"]), env={**os.environ, "FLOE_CACHE": str(ref)},
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    reference = digest(only_run(ref, "warmup").path, VOLATILE)

    job = jobs.submit_floe(args, "warm-up", root=cache)
    _wait(lambda: (cache / "runs").exists() and any(
        r.get("event") == "step" for run in (cache / "runs").iterdir()
        for r in _records(run / "progress.jsonl")))
    os.kill(job["pid"], signal.SIGKILL)  # the supervisor only; its floe child runs on
    _wait(lambda: not jobs._alive(job["pid"]))
    jobs.tick(cache)
    settled = jobs.get(job["id"], cache)
    assert settled["status"] == jobs.FAILED and not jobs._group_alive(job["pid"])
    run = only_run(cache, "warmup")
    assert run.status == "stale"
    jobs.resume(job["id"], cache)
    _wait(lambda: jobs.get(job["id"], cache)["status"] in (jobs.DONE, jobs.FAILED), timeout=240)
    assert jobs.get(job["id"], cache)["status"] == jobs.DONE and run.status == "done"
    identical = digest(run.path, VOLATILE) == reference
    RESULTS.append({"stage": "job supervisor", "point": "SIGKILL at the first step", "killed": True,
                    "outcome": "identical" if identical else "different"})
    assert identical

    code = ("import sys, pathlib, time; from floe.store import jobs; "
            "jobs.submit(jobs.floe_command(['runs', 'list']), 'list', ['runs', 'list'], "
            "root=pathlib.Path(sys.argv[1])); time.sleep(600)")
    app = subprocess.Popen([sys.executable, "-c", code, str(cache)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    _wait(lambda: len(jobs.list_jobs(cache)) == 2)
    app.kill()
    app.wait()
    newest = jobs.list_jobs(cache)[0]
    # The job runs in a fresh interpreter: under a loaded 2-core suite it once missed 120 s.
    _wait(lambda: jobs.get(newest["id"], cache)["status"] == jobs.DONE, timeout=300)
    RESULTS.append({"stage": "app server", "point": "SIGKILL after submitting", "killed": True,
                    "outcome": "job finished"})


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _wait(predicate, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_report_counts_each_stage_and_outcome():
    """The report's figures (crash_report writes them), on records of every kind."""
    records = [{"stage": "warm-up", "point": "log:warmup:1", "killed": True, "outcome": "identical"},
               {"stage": "warm-up", "point": "write:2", "killed": False, "outcome": "identical"},
               {"stage": "rank-search trial", "point": "log:train:1", "killed": True,
                "outcome": "reported and repaired"},
               {"stage": "export", "point": "write:1", "killed": True, "outcome": "different"}]
    assert by_stage(records) == {"warm-up": {"points": 2, "identical": 2, "other": 0},
                                 "rank-search trial": {"points": 1, "identical": 0, "other": 1},
                                 "export": {"points": 1, "identical": 0, "other": 1}}
    assert by_stage([]) == {}
