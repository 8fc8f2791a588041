"""Background jobs: ``floe`` CLI subprocesses with an on-disk registry and a per-device queue.

A job is one JSON file in ``cache/jobs/`` (so it outlives a page reload or an app restart)
and runs as ``python -m floe.store.supervisor run <id>``: a small supervisor that leads its own process
group (``start_new_session``), runs the command as its child, records the exit status,
error line and ``--json`` summary, then starts the next queued job. Cancel sends SIGINT to
the whole group (the CLI marks its run cancelled, resumable), then SIGKILL after a grace
period. One job runs at a time per device: each GPU, or the CPU when there is none; a
training job on a several-GPU machine takes them all, through ``accelerate launch``.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, cast

from floe.store import artifacts
from floe.store.artifacts import JobRecord
from floe.store.runs import PROJECT_DIR, CorruptRunError, Run, atomic_write_json, cache_root, list_runs, read_json
from floe.store.runs import RUNNING as RUN_RUNNING

__all__ = ["ACTIVE", "CANCELLED", "DONE", "EXIT_CANCELLED", "FAILED", "MULTI_GPU_COMMANDS", "QUEUED", "RUNNING",
           "active_jobs", "cancel", "delete", "device_slots", "display_command", "floe_command", "floe_job_command",
           "get", "gpu_count", "held_runs", "job_file", "job_for_run", "jobs_dir", "list_jobs", "log_path",
           "log_tail", "resume", "submit", "submit_floe", "tick", "update_job"]

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)
EXIT_CANCELLED = 130  # the CLI's exit status after Ctrl-C (floe.cli.main)
MULTI_GPU_COMMANDS = ("train",)  # these go through `accelerate launch` on several GPUs


def jobs_dir(root: Path | None = None) -> Path:
    folder = (root or cache_root()) / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@functools.cache
def gpu_count() -> int:
    """CUDA devices visible to this process."""
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_slots() -> list[str]:
    """The queue's devices: each GPU by its physical id, or the one CPU slot.

    Supervisors inherit the app's list (``FLOE_DEVICE_SLOTS``): their own view of CUDA is
    narrowed to their job's GPU, so they must not recount.
    """
    if os.environ.get("FLOE_DEVICE_SLOTS"):
        return os.environ["FLOE_DEVICE_SLOTS"].split(",")
    n = gpu_count()
    if not n:
        return ["cpu"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")][:n] if visible else [str(i) for i in range(n)]
    return [f"cuda:{i}" for i in ids]


def floe_command(args: list[str]) -> list[str]:
    """The argv that runs ``floe <args>`` with this interpreter (no shell, no PATH lookup)."""
    return [sys.executable, "-m", "floe", *args]


def display_command(args: list[str]) -> str:
    """The command a user would type for ``floe <args>`` (quoted for a POSIX shell)."""
    import shlex
    return shlex.join(["floe", *args])


# --------------------------------------------------------------------------- the registry
@contextlib.contextmanager
def _locked(root: Path | None):
    """One process at a time reads-modifies-writes the registry (app, supervisors)."""
    with open(jobs_dir(root) / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def job_file(job_id: str, root: Path | None, suffix: str = ".json") -> Path:
    if not job_id.startswith("job-") or not job_id[4:].replace("-", "").isalnum():
        raise ValueError(f"invalid job id {job_id!r}")
    return jobs_dir(root) / f"{job_id}{suffix}"


def _read(path: Path) -> JobRecord:
    return artifacts.check(artifacts.JOB, read_json(path))


def get(job_id: str, root: Path | None = None) -> JobRecord:
    return _read(job_file(job_id, root))


def _save(job: JobRecord, root: Path | None) -> JobRecord:
    atomic_write_json(job_file(job["id"], root), artifacts.check(artifacts.JOB, job, writing=True))
    return job


def update_job(job_id: str, root: Path | None, **fields: Any) -> JobRecord:
    with _locked(root):
        # the merged record is checked against JobRecord by _save
        return _save(cast(JobRecord, {**get(job_id, root), **fields, "updated": time.time()}), root)


def list_jobs(root: Path | None = None) -> list[JobRecord]:
    """All jobs, newest first (a half-written or foreign file is skipped)."""
    jobs: list[JobRecord] = []
    for path in jobs_dir(root).glob("job-*.json"):
        with contextlib.suppress(Exception):
            jobs.append(_read(path))
    return sorted(jobs, key=lambda j: j.get("created", 0), reverse=True)


def log_path(job: JobRecord, root: Path | None = None) -> Path:
    return job_file(job["id"], root, ".log")


def log_tail(job: JobRecord, root: Path | None = None, lines: int = 8) -> list[str]:
    path = log_path(job, root)
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 16384))  # the end is enough: never read a huge log
        text = f.read().decode("utf-8", "replace")
    # tqdm redraws a line with carriage returns; keep each line's last state.
    return [ln.rsplit("\r", 1)[-1] for ln in text.splitlines() if ln.strip()][-lines:]


def submit(command: list[str], label: str, args: list[str] | None = None, gpus: str = "one",
           root: Path | None = None) -> JobRecord:
    """Queue ``command`` (an argv, run without a shell); starts it now if its device is free.

    ``args`` are the floe CLI arguments shown to the user; ``gpus`` is ``one`` or ``all``.
    """
    if not command or not all(isinstance(a, str) for a in command):
        raise ValueError("a job's command is a non-empty list of strings")
    now = time.time()
    job: JobRecord = {"id": f"job-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
           "label": label, "command": list(command), "args": list(args or []), "gpus": gpus,
           "status": QUEUED, "created": now, "updated": now, "started": None,
           "finished": None, "pid": None, "devices": [], "returncode": None, "error": None,
           "result": None, "attempts": 0, "cancel_requested": False, "runs": []}
    with _locked(root):
        _save(job, root)
    tick(root)
    return get(job["id"], root)


def floe_job_command(args: list[str]) -> tuple[list[str], str]:
    """(argv, gpus) for ``floe <args>`` as a job: a machine-readable summary on stdout, no
    progress bars (the run's progress.jsonl is the progress); several GPUs: accelerate."""
    args = [*args] + [flag for flag in ("--json", "--quiet") if flag not in args]
    n = sum(s.startswith("cuda:") for s in device_slots())
    if args and args[0] in MULTI_GPU_COMMANDS and n > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", str(n), "-m", "floe", *args], "all"
    return floe_command(args), "one"


def submit_floe(args: list[str], label: str, root: Path | None = None) -> JobRecord:
    """Queue ``floe <args>`` on the next free device."""
    command, gpus = floe_job_command(args)
    return submit(command, label, args, gpus=gpus, root=root)


# --------------------------------------------------------------------------- the queue
def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that ended: reap it
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _supervising(job: JobRecord) -> bool:
    """Whether the job's supervisor still runs; its command line names the job, so a pid
    reused after a reboot is not mistaken for it (where /proc exists)."""
    pid = job.get("pid")
    if not _alive(pid):
        return False
    try:
        return job["id"].encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _free_slots(jobs: list[JobRecord]) -> list[str]:
    busy = {d for j in jobs if j["status"] == RUNNING for d in j.get("devices", [])}
    return [s for s in device_slots() if s not in busy]


def _launch(job: JobRecord, devices: list[str], root: Path | None) -> JobRecord:
    env = {**os.environ, "FLOE_CACHE": str(root or cache_root()), "PYTHONUNBUFFERED": "1",
           "FLOE_DEVICE_SLOTS": ",".join(device_slots())}
    gpus = [d.split(":")[1] for d in devices if d.startswith("cuda:")]
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    supervisor = [sys.executable, "-m", "floe.store.supervisor", "run", job["id"], "--root",
                  str(root or cache_root())]
    with open(log_path(job, root), "ab") as log:
        proc = subprocess.Popen(supervisor, env=env, start_new_session=True, cwd=_project_dir(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    job.update({"status": RUNNING, "pid": proc.pid, "devices": devices, "started": time.time(),
                "finished": None, "returncode": None, "error": None, "result": None,
                "attempts": job.get("attempts", 0) + 1, "cancel_requested": False,
                "updated": time.time()})
    return _save(job, root)


def _project_dir() -> str:
    return str(PROJECT_DIR)


def tick(root: Path | None = None) -> list[JobRecord]:
    """Settle jobs whose supervisor died, then start queued jobs (FIFO) on free devices.

    Called by the app whenever it polls and by each supervisor when its job ends.
    """
    with _locked(root):
        jobs = list_jobs(root)
        for job in jobs:
            if job["status"] == RUNNING:
                _note_runs(job, root)
            if job["status"] == RUNNING and not _supervising(job):
                _stop_orphans(job)
                cancelled = job.get("cancel_requested")
                job.update({"status": CANCELLED if cancelled else FAILED, "finished": time.time(),
                            "error": job.get("error") or ("cancelled" if cancelled else
                                                          "the job's process ended without a result")})
                _save(job, root)
        for job in sorted((j for j in jobs if j["status"] == QUEUED), key=lambda j: j["created"]):
            free = _free_slots(jobs)
            need = device_slots() if job.get("gpus") == "all" else free[:1]
            if not free or any(d not in free for d in need):
                break  # strict FIFO: a job waiting for all GPUs is not overtaken
            _launch(job, need, root)
        return jobs


def _stop_orphans(job: JobRecord) -> None:
    """Stop what a supervisor killed alone left running (its run stays stale, resumable)."""
    pid = job.get("pid")
    if pid and not _alive(pid) and _group_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        _wait_group(pid, 5.0)


def held_runs(job: JobRecord, root: Path | None = None) -> list[Run]:
    """Runs that a running job's processes hold now, most recently active first."""
    if job.get("status") != RUNNING or not job.get("pid"):
        return []
    held = []
    for run in list_runs(root):
        with contextlib.suppress(CorruptRunError, OSError, KeyError, TypeError, ValueError):
            state = run.state
            if state.get("status") == RUN_RUNNING and os.getpgid(int(state["pid"])) == job["pid"]:
                held.append(run)
    return sorted(held, key=lambda r: _mtime(r.file("progress.jsonl")), reverse=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _note_runs(job: JobRecord, root: Path | None) -> None:
    """Remember which runs a job worked on, so a stopped run can be resumed by its job."""
    seen = [r.id for r in held_runs(job, root) if r.id not in job.get("runs", [])]
    if seen:
        job["runs"] = job.get("runs", []) + seen
        _save(job, root)


def job_for_run(run_id: str, root: Path | None = None) -> JobRecord | None:
    """The newest job that worked on (or produced) a run."""
    for job in list_jobs(root):
        if run_id in job.get("runs", []) or (job.get("result") or {}).get("run") == run_id:
            return job
    return None


def cancel(job_id: str, root: Path | None = None, grace: float = 10.0) -> JobRecord:
    """Stop a job: a queued one is dropped; a running one gets SIGINT (the CLI saves its
    state and marks its run cancelled), then SIGKILL if its group outlives ``grace``."""
    with _locked(root):
        job = get(job_id, root)
        if job["status"] == QUEUED:
            job.update({"status": CANCELLED, "finished": time.time(), "error": "cancelled before it started"})
            return _save(job, root)
        if job["status"] != RUNNING:
            return job
        job.update({"cancel_requested": True})
        _save(job, root)
    pid = job["pid"]
    assert pid is not None, "a running job has its supervisor's pid (set by _launch)"
    _signal_group(pid, signal.SIGINT)
    if not _wait_group(pid, grace):
        _signal_group(pid, signal.SIGKILL)
        _wait_group(pid, 5.0)
    tick(root)  # settles a killed supervisor, starts the next job
    return get(job_id, root)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group(pgid: int, seconds: float) -> bool:
    """Whether the group ended within ``seconds``."""
    deadline = time.time() + seconds
    while _group_alive(pgid):
        if time.time() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _group_alive(pgid: int) -> bool:
    _alive(pgid)  # reaps the supervisor if it is our own child, so its zombie does not count
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resume(job_id: str, root: Path | None = None) -> JobRecord:
    """Queue a cancelled or failed job again: the CLI resumes its runs from checkpoints."""
    with _locked(root):
        job = get(job_id, root)
        if job["status"] not in (CANCELLED, FAILED):
            raise ValueError(f"job {job_id} is {job['status']}; only a cancelled or failed "
                             "job can be resumed")
        job.update({"status": QUEUED, "created": time.time(), "error": None, "returncode": None,
                    "finished": None, "cancel_requested": False})
        _save(job, root)
    tick(root)
    return get(job_id, root)


def delete(job_id: str, root: Path | None = None) -> None:
    """Forget a finished job (its runs stay in cache/runs)."""
    with _locked(root):
        if get(job_id, root)["status"] in ACTIVE:
            raise ValueError(f"job {job_id} is still active: cancel it first")
        for suffix in (".json", ".log", ".out"):
            with contextlib.suppress(FileNotFoundError):
                job_file(job_id, root, suffix).unlink()


def active_jobs(root: Path | None = None) -> list[JobRecord]:
    return [j for j in list_jobs(root) if j["status"] in ACTIVE]
