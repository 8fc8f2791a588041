"""The supervisor of one background job (``python -m floe.store.supervisor run <id>``, started
by floe.store.jobs): it leads its own process group, runs the job's command as its child,
records the exit status, error line and ``--json`` summary, then starts the next queued job.
``tick`` and ``list`` settle and print the queue from a shell."""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from floe.store.jobs import (
    CANCELLED,
    DONE,
    EXIT_CANCELLED,
    FAILED,
    get,
    job_file,
    list_jobs,
    log_path,
    log_tail,
    tick,
    update_job,
)
from floe.store.runs import PROJECT_DIR, cache_root

__all__ = ["main", "supervise"]


def _error_line(lines: list[str]) -> str | None:
    """The message of a failure: the CLI's one-line error, else a traceback's last line."""
    for line in reversed(lines):
        if ": error: " in line or "Error" in line.split(":", 1)[0]:
            return line.strip()
    return lines[-1].strip() if lines else None


def _summary(out: Path) -> dict[str, Any] | None:
    """The ``--json`` summary the CLI printed last on stdout, if any."""
    with contextlib.suppress(OSError, ValueError):
        text = out.read_text()
        start = text.rfind("\n{") + 1 if "\n{" in text else text.find("{")
        if start >= 0:
            return json.loads(text[start:])
    return None


def supervise(job_id: str, root: Path) -> int:
    """Run one job's command as a child, record how it ended, start the next job."""
    job = get(job_id, root)
    out = job_file(job_id, root, ".out")
    # SIGINT reaches the whole group: the child handles it; we wait for its exit status.
    # (A no-op handler, not SIG_IGN, which the child would inherit through exec.)
    signal.signal(signal.SIGINT, lambda *_: None)
    with open(out, "wb") as stdout, open(log_path(job, root), "ab") as stderr:
        try:
            child = subprocess.Popen(job["command"], stdout=stdout, stderr=stderr,
                                     stdin=subprocess.DEVNULL, cwd=str(PROJECT_DIR))
            rc = child.wait()
        except OSError as e:
            stderr.write(f"could not start {job['command'][0]}: {e}\n".encode())
            rc = 127
    job = get(job_id, root)
    cancelled = job.get("cancel_requested") or rc in (EXIT_CANCELLED, -signal.SIGINT)
    status = DONE if rc == 0 else CANCELLED if cancelled else FAILED
    error = None if rc == 0 else "cancelled" if cancelled else \
        _error_line(log_tail(job, root, 20)) or f"exit status {rc}"
    update_job(job_id, root, status=status, returncode=rc, finished=time.time(), error=error,
            result=_summary(out) if rc == 0 else None)
    tick(root)
    return rc


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m floe.store.supervisor",
                                     description="the app's job supervisor and queue")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one queued job (started by the app)")
    run.add_argument("job_id")
    run.add_argument("--root", type=Path, default=None)
    sub.add_parser("tick", help="settle dead jobs and start queued ones")
    sub.add_parser("list", help="print the jobs")
    args = parser.parse_args(argv)
    root = args.root if getattr(args, "root", None) else cache_root()
    if args.command == "run":
        return supervise(args.job_id, root)
    jobs = tick(root) if args.command == "tick" else list_jobs(root)
    for job in jobs:
        print(f"{job['id']}  {job['status']:<9}  {job['label']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
