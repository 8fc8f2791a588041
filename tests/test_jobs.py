"""The job registry and queue: real subprocesses running small Python scripts."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from floe.store import jobs
from floe.store.runs import list_runs

# A job that holds a run, logs steps and waits; `mode` decides how it ends.
WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    from floe.store.runs import run_for
    mode, name = sys.argv[1], sys.argv[2]
    if mode == "deaf":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if mode == "fail":
        print("floe fake: error: the data file has no rows", file=sys.stderr)
        sys.exit(2)
    run = run_for("fake", {"name": name})
    done_before = os.path.exists(run.file("marker"))
    try:
        with run.hold():
            run.log(event="start", stage="fake", total_steps=3, resumed_from=0)
            for step in range(1, 4):
                run.log(event="step", stage="fake", step=step, total_steps=3, loss=1.0 / step,
                        eta=1.0)
                time.sleep(0.05)
            open(run.file("marker"), "w").close()
            while mode in ("wait", "deaf") and not done_before:
                time.sleep(0.05)
            run.finish([])
    except KeyboardInterrupt:
        sys.exit(130)
    print(json.dumps({"run": run.id, "env": os.environ.get("CUDA_VISIBLE_DEVICES")}, indent=2))
""")


@pytest.fixture
def worker(tmp_path):
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return lambda mode, name="a": [sys.executable, str(path), mode, name]


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOE_DEVICE_SLOTS", "cpu")
    folder = tmp_path / "cache"
    folder.mkdir()
    yield folder
    for job in jobs.active_jobs(folder):  # never leave a process behind
        jobs.cancel(job["id"], folder, grace=1)


def wait_for(root, job_id, statuses=(jobs.DONE, jobs.FAILED, jobs.CANCELLED), timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = jobs.get(job_id, root)
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {jobs.get(job_id, root)['status']}")


def wait_until(predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_job_runs_in_background_and_records_its_summary(root, worker):
    job = jobs.submit(worker("quick"), "quick job", root=root)
    assert job["status"] == jobs.RUNNING and job["devices"] == ["cpu"]
    job = wait_for(root, job["id"])
    assert job["status"] == jobs.DONE and job["returncode"] == 0
    assert job["result"]["run"] == list_runs(root)[0].id
    assert list_runs(root)[0].status == "done"


def test_failure_keeps_the_message_not_a_traceback(root, worker):
    job = wait_for(root, jobs.submit(worker("fail"), "bad", root=root)["id"])
    assert job["status"] == jobs.FAILED and job["returncode"] == 2
    assert job["error"] == "floe fake: error: the data file has no rows"


def test_one_job_per_device_others_queue_then_start(root, worker):
    first = jobs.submit(worker("wait", "first"), "first", root=root)
    second = jobs.submit(worker("quick", "second"), "second", root=root)
    assert jobs.get(second["id"], root)["status"] == jobs.QUEUED
    wait_until(lambda: (root / "runs").exists() and any(
        r.file("marker").exists() for r in list_runs(root)))
    jobs.cancel(first["id"], root, grace=10)
    # The queue moves on without the app: the cancelled job's supervisor starts the next.
    assert wait_for(root, second["id"])["status"] == jobs.DONE


def test_cancel_stops_the_group_and_leaves_the_run_resumable(root, worker):
    job = jobs.submit(worker("wait"), "waits", root=root)
    wait_until(lambda: any(r.file("marker").exists() for r in list_runs(root)))
    job = jobs.cancel(job["id"], root, grace=10)
    assert job["status"] == jobs.CANCELLED
    assert not jobs._group_alive(job["pid"])
    run = list_runs(root)[0]
    assert run.status == "cancelled"
    # Resume: the same command again; this worker finishes when its marker exists.
    job = wait_for(root, jobs.resume(job["id"], root)["id"])
    assert job["status"] == jobs.DONE and job["attempts"] == 2
    assert run.status == "done"


def test_cancel_escalates_to_sigkill(root, worker):
    job = jobs.submit(worker("deaf"), "ignores SIGINT", root=root)
    wait_until(lambda: any(r.file("marker").exists() for r in list_runs(root)))
    job = jobs.cancel(job["id"], root, grace=0.5)
    assert job["status"] == jobs.CANCELLED and not jobs._group_alive(job["pid"])
    assert list_runs(root)[0].status == "stale"  # killed mid-run: resumable


def test_job_outlives_the_process_that_started_it(root, worker):
    code = ("import sys, pathlib; from floe.store import jobs; "
            f"jobs.submit({worker('quick')!r}, 'detached', root=pathlib.Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(root)], check=True,
                   env={**os.environ, "FLOE_DEVICE_SLOTS": "cpu"})
    (job,) = jobs.list_jobs(root)
    assert wait_for(root, job["id"])["status"] == jobs.DONE


def test_gpus_each_run_one_job_and_an_all_gpu_job_waits(root, worker, monkeypatch):
    monkeypatch.setenv("FLOE_DEVICE_SLOTS", "cuda:0,cuda:1")
    a = jobs.submit(worker("wait", "a"), "a", root=root)
    b = jobs.submit(worker("wait", "b"), "b", root=root)
    c = jobs.submit(worker("quick", "c"), "c", gpus="all", root=root)
    assert {tuple(jobs.get(j["id"], root)["devices"]) for j in (a, b)} == {("cuda:0",), ("cuda:1",)}
    assert jobs.get(c["id"], root)["status"] == jobs.QUEUED
    wait_until(lambda: sum(r.file("marker").exists() for r in list_runs(root)) == 2)
    jobs.cancel(a["id"], root)
    assert jobs.get(c["id"], root)["status"] == jobs.QUEUED  # b still holds cuda:1
    jobs.cancel(b["id"], root)
    assert wait_for(root, c["id"])["result"]["env"] == "0,1"


def test_training_goes_through_accelerate_on_several_gpus(monkeypatch):
    monkeypatch.setenv("FLOE_DEVICE_SLOTS", "cuda:0,cuda:1")
    command, gpus = jobs.floe_job_command(["train", "--k", "4"])
    assert gpus == "all" and command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[-7:] == ["-m", "floe", "train", "--k", "4", "--json", "--quiet"]
    assert jobs.floe_job_command(["analyze", "--quiet"]) == (
        [sys.executable, "-m", "floe", "analyze", "--quiet", "--json"], "one")
    monkeypatch.setenv("FLOE_DEVICE_SLOTS", "cpu")
    assert jobs.floe_job_command(["train"])[1] == "one"


def test_registry_rejects_bad_ids_and_deletes_only_finished_jobs(root, worker):
    with pytest.raises(ValueError):
        jobs.get("job-../../etc/passwd", root)
    job = jobs.submit(worker("wait"), "waits", root=root)
    with pytest.raises(ValueError, match="still active"):
        jobs.delete(job["id"], root)
    jobs.cancel(job["id"], root)
    jobs.delete(job["id"], root)
    assert jobs.list_jobs(root) == []


def test_a_dead_supervisor_is_settled_as_failed(root, worker):
    job = jobs.submit(worker("deaf"), "killed", root=root)
    wait_until(lambda: any(r.file("marker").exists() for r in list_runs(root)))
    jobs._signal_group(job["pid"], 9)  # as if the machine killed it (OOM killer)
    wait_until(lambda: not jobs._group_alive(job["pid"]))
    jobs.tick(root)
    job = jobs.get(job["id"], root)
    assert job["status"] == jobs.FAILED and "ended without a result" in job["error"]


def test_a_reused_pid_is_not_taken_for_the_supervisor(root, worker):
    """After a reboot the registry's pid may belong to another process."""
    job = wait_for(root, jobs.submit(worker("quick"), "old", root=root)["id"])
    jobs.update_job(job["id"], root, status=jobs.RUNNING, pid=os.getpid())  # alive, but not it
    jobs.tick(root)
    assert jobs.get(job["id"], root)["status"] == jobs.FAILED
