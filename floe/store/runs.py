"""Runs in ``cache/``: one folder per run, keyed by a hash of its full config.

A run folder holds ``config.json`` (what was asked), ``state.json`` (status, pid, times,
error, and on completion a manifest of artifact checksums), ``progress.jsonl`` (the log
the CLI and the app read) and the stage's artifacts. Every write is atomic (temp file +
rename); an ``fcntl`` lock keeps two processes off one run and dies with its holder, so a
killed job leaves a run that is detected as stale and can be resumed or discarded.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floe.store.config import config_hash

__all__ = ["CANCELLED", "CONFIG", "DONE", "FAILED", "LOCK", "PROGRESS", "PROJECT_DIR", "RUNNING", "STATE",
           "CorruptRunError", "Run", "RunLockedError", "atomic_save_tensors", "atomic_write_bytes",
           "atomic_write_json", "cache_root", "list_runs", "log_listener", "open_run", "read_json",
           "run_for", "safe_name"]

CONFIG, STATE, PROGRESS, LOCK = "config.json", "state.json", "progress.jsonl", ".lock"
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# Called with (run, record) after each Run.log in this process (experiment trackers).
_LISTENERS: list = []


@contextlib.contextmanager
def log_listener(listener):
    """While inside, ``listener(run, record)`` sees every progress record any run logs."""
    _LISTENERS.append(listener)
    try:
        yield listener
    finally:
        _LISTENERS.remove(listener)


# The checkout holding floe/, app.py and cache/ (this file is floe/store/runs.py).
PROJECT_DIR = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    """``$FLOE_CACHE`` or the project's ``cache/`` folder."""
    root = Path(os.environ.get("FLOE_CACHE") or PROJECT_DIR / "cache")
    root.mkdir(parents=True, exist_ok=True)
    return root


def safe_name(name: str) -> str:
    """Reject names that could escape a folder (user text never becomes a path unchecked)."""
    if not _SAFE.match(name or "") or ".." in name:
        raise ValueError(f"invalid name {name!r}: use letters, digits, '.', '_' or '-' "
                         "(at most 128, not starting with a dot)")
    return name


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save_tensors(path: str | Path, tensors: dict) -> None:
    """A safetensors file, written atomically (never a half-written file under ``path``)."""
    from safetensors.torch import save
    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CorruptRunError(f"{path} is not valid JSON ({e}); the run is corrupt") from e


class CorruptRunError(RuntimeError):
    """A run folder whose files are missing, truncated or do not match their checksums."""


class RunLockedError(RuntimeError):
    """Another live process holds this run."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Run:
    """A handle on one run folder."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        return self.id.split("-", 1)[0]

    def file(self, name: str) -> Path:
        return self.path / name

    # --- config and state -------------------------------------------------
    @property
    def config(self) -> dict:
        return read_json(self.file(CONFIG))

    @property
    def state(self) -> dict:
        path = self.file(STATE)
        return read_json(path) if path.exists() else {"status": "new"}

    def update_state(self, **fields) -> dict:
        state = {**self.state, **fields, "updated": time.time()}
        atomic_write_json(self.file(STATE), state)
        return state

    @property
    def status(self) -> str:
        """new / running / done / failed / cancelled, or ``stale`` for a dead job's run."""
        state = self.state
        if state.get("status") == RUNNING and not self.is_locked():
            return "stale"
        return state.get("status", "new")

    def is_locked(self) -> bool:
        try:
            with open(self.file(LOCK), "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        except FileNotFoundError:
            return False

    # --- artifacts --------------------------------------------------------
    def write_json(self, name: str, payload: Any) -> Path:
        atomic_write_json(self.file(name), payload)
        return self.file(name)

    def read_json(self, name: str) -> Any:
        path = self.file(name)
        if not path.exists():
            raise CorruptRunError(f"run {self.id} has no {name}")
        return read_json(path)

    def log(self, **record) -> None:
        """Append one progress record (one JSON line, flushed: readers poll this file)."""
        record.setdefault("time", time.time())
        with open(self.file(PROGRESS), "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
        for listener in _LISTENERS:
            listener(self, record)

    def progress(self) -> list[dict]:
        """The progress log; a torn last line (killed mid-write) is skipped."""
        path = self.file(PROGRESS)
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
        return records

    def finish(self, artifacts: list[str], **fields) -> None:
        """Mark done with a checksum manifest of ``artifacts`` (paths relative to the run)."""
        manifest = {name: _sha256(self.file(name)) for name in artifacts}
        self.update_state(status=DONE, finished=time.time(), manifest=manifest, **fields)

    def verify(self) -> None:
        """Raise CorruptRunError unless the run is done and every artifact is intact."""
        state = self.state
        if state.get("status") != DONE:
            raise CorruptRunError(f"run {self.id} is not finished (status: {self.status})")
        for name, digest in state.get("manifest", {}).items():
            path = self.file(name)
            if not path.exists():
                raise CorruptRunError(f"run {self.id}: artifact {name} is missing")
            if _sha256(path) != digest:
                raise CorruptRunError(f"run {self.id}: artifact {name} does not match its "
                                      "checksum (modified or half-written)")

    def delete(self) -> None:
        if self.is_locked():
            raise RunLockedError(f"run {self.id} is in use by a live process")
        shutil.rmtree(self.path)

    @contextlib.contextmanager
    def hold(self):
        """Exclusive lock for the duration of a job; marks the run running, then failed
        or cancelled if the job raises (a SIGKILL leaves it ``stale``: resumable)."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.file(LOCK), "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunLockedError(f"run {self.id} is already being computed by another process") from None
        try:
            self.update_state(status=RUNNING, pid=os.getpid(), host=socket.gethostname(),
                              started=time.time(), error=None)
            yield self
        except KeyboardInterrupt:
            self.update_state(status=CANCELLED, error="cancelled")
            raise
        except BaseException as e:
            self.update_state(status=FAILED, error=f"{type(e).__name__}: {e}")
            raise
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()


def run_for(kind: str, config: dict, root: Path | None = None) -> Run:
    """The run folder of ``config`` (created with its config.json if new)."""
    safe_name(kind)
    run = Run((root or cache_root()) / "runs" / f"{kind}-{config_hash(config)}")
    if not run.file(CONFIG).exists():
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.file(CONFIG), {"kind": kind, **config})
    return run


def open_run(run_id: str, root: Path | None = None) -> Run:
    run = Run((root or cache_root()) / "runs" / safe_name(run_id))
    if not run.file(CONFIG).exists():
        raise FileNotFoundError(f"no run {run_id!r} in {run.path.parent}")
    return run


def list_runs(root: Path | None = None) -> list[Run]:
    folder = (root or cache_root()) / "runs"
    if not folder.exists():
        return []
    runs = [Run(p) for p in folder.iterdir() if (p / CONFIG).exists()]
    return sorted(runs, key=lambda r: r.file(CONFIG).stat().st_mtime, reverse=True)
