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

from floe.store import artifacts
from floe.store.artifacts import CONFIG, STATE, StateJson
from floe.store.config import config_hash

__all__ = ["CANCELLED", "CONFIG", "DONE", "FAILED", "GARBAGE", "LOCK", "PROGRESS", "PROJECT_DIR", "RUNNING",
           "STATE", "CorruptRunError", "Run", "RunLockedError", "atomic_save_tensors", "atomic_write_bytes",
           "atomic_write_json", "cache_root", "collect_garbage", "crash_point", "health", "list_runs",
           "load_tensors", "log_listener", "open_run", "read_json", "reuse_finished", "run_for", "run_id_of",
           "safe_name"]

PROGRESS, LOCK = "progress.jsonl", ".lock"
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


def crash_point(kind: str, stage: str | None = None) -> None:
    """Test hook of the crash-consistency suite: ``FLOE_CRASH_AT=write:N`` SIGKILLs this
    process in the middle of its N-th atomic write (temp file written, not yet renamed);
    ``log:STAGE:N`` right after its N-th progress record of STAGE. ``FLOE_CRASH_TRACE=FILE``
    lists the points a run passes (where the suite draws its kill points from). Unset: nothing."""
    if os.environ.get("FLOE_CRASH_TRACE"):
        with open(os.environ["FLOE_CRASH_TRACE"], "a") as f:
            f.write(f"{kind}:{stage}\n" if kind == "log" else f"{kind}\n")
    spec = os.environ.get("FLOE_CRASH_AT")
    if not spec:
        return
    want, _, rest = spec.partition(":")
    want_stage, _, n = rest.rpartition(":")
    if want != kind or (kind == "log" and want_stage != stage):
        return
    _CRASH_COUNTS[spec] = _CRASH_COUNTS.get(spec, 0) + 1
    if _CRASH_COUNTS[spec] == int(n):
        os.kill(os.getpid(), 9)


_CRASH_COUNTS: dict[str, int] = {}


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        crash_point("write")
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


def load_tensors(path: str | Path) -> dict:
    """A safetensors file as tensors; CorruptRunError (not safetensors' own error type) when it
    is truncated or damaged."""
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:  # SafetensorError, or OSError on a short read
        raise CorruptRunError(f"{path} is damaged or truncated ({type(e).__name__}: {e}); "
                              "recompute it (--force) or delete its run (floe runs delete)") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CorruptRunError(f"{path} is not valid JSON ({e}); the run is corrupt: run the "
                              "command again with --force, or delete it (floe runs delete / "
                              "floe runs gc)") from e


class CorruptRunError(RuntimeError):
    """A run folder whose files are missing, truncated or do not match their checksums."""


def _checked(name: str, payload: Any, path: Path) -> Any:
    try:
        return artifacts.check(name, payload)
    except artifacts.ArtifactError as e:
        raise CorruptRunError(f"{path}: {e}; the run is corrupt: run the command again with --force, "
                              "or delete it (floe runs delete / floe runs gc)") from None


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
    def state(self) -> StateJson:
        path = self.file(STATE)
        return _checked(STATE, read_json(path), path) if path.exists() else {"status": "new"}

    def update_state(self, **fields: Any) -> StateJson:
        state: StateJson = artifacts.check(STATE, {**self.state, **fields, "updated": time.time()}, writing=True)
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
        """Write an artifact, checked against its shape (floe.store.artifacts) first."""
        atomic_write_json(self.file(name), artifacts.check(name, payload, writing=True))
        return self.file(name)

    def read_json(self, name: str) -> Any:
        """An artifact, checked against its shape: a damaged one is a CorruptRunError."""
        path = self.file(name)
        if not path.exists():
            raise CorruptRunError(f"run {self.id} has no {name}")
        return _checked(name, read_json(path), path)

    def log(self, **record) -> None:
        """Append one progress record (one JSON line, flushed: readers poll this file)."""
        record.setdefault("time", time.time())
        with open(self.file(PROGRESS), "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
        for listener in _LISTENERS:
            listener(self, record)
        crash_point("log", record.get("stage"))

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

    def clear_corrupt(self, config: dict | None = None) -> None:
        """Repair what ``--force`` can: an unreadable state.json is dropped (the run starts
        afresh), an unreadable config.json rewritten from ``config`` (the run's key)."""
        with contextlib.suppress(CorruptRunError):
            self.state  # noqa: B018 (read to check)
            return
        self.file(STATE).unlink(missing_ok=True)
        if config is not None:
            atomic_write_json(self.file(CONFIG), config)

    def _produced_nothing(self) -> bool:
        """Only the bookkeeping files: an early failure (bad option, data, model) left it."""
        return all(p.name in (CONFIG, STATE, PROGRESS, LOCK) for p in self.path.iterdir())

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
            fresh = self.state.get("status", "new") == "new" and self._produced_nothing()
            self.update_state(status=RUNNING, pid=os.getpid(), host=socket.gethostname(),
                              started=time.time(), error=None)
            yield self
        except KeyboardInterrupt:
            self.update_state(status=CANCELLED, error="cancelled")
            raise
        except BaseException as e:
            if fresh and self._produced_nothing():
                # A typo's error is reported by the caller; a `failed` folder would only
                # clutter the cache.
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                self.update_state(status=FAILED, error=f"{type(e).__name__}: {e}")
            raise
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()


def run_id_of(kind: str, config: dict) -> str:
    """The id of the run of ``config`` (without its ``"kind"``): the kind and the config's hash."""
    safe_name(kind)
    return f"{kind}-{config_hash(config)}"


def run_for(kind: str, config: dict, root: Path | None = None) -> Run:
    """The run folder of ``config`` (created with its config.json if new; an unreadable
    config.json is rewritten: the key determines it)."""
    run = Run((root or cache_root()) / "runs" / run_id_of(kind, config))
    try:
        intact = run.file(CONFIG).exists() and isinstance(read_json(run.file(CONFIG)), dict)
    except CorruptRunError:
        intact = False
    if not intact:
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.file(CONFIG), {"kind": kind, **config})
    return run


def reuse_finished(run: Run, force: bool) -> bool:
    """Whether ``run`` is finished and intact and may be returned as is. With ``force`` it
    never is, and an unreadable state.json is cleared first so the run can be recomputed
    (``--force`` repairs a run a crash or a full disk damaged)."""
    if force:
        run.clear_corrupt()
        return False
    if run.status == DONE:
        run.verify()
        return True
    return False


def health(run: Run) -> str:
    """The status of a run for listing and cleaning: new/running/done/failed/cancelled/
    stale, or ``corrupt`` when its config or state cannot be read or a finished run's
    artifacts do not match their checksums (or a crash left the folder without a config)."""
    if not run.file(CONFIG).exists():
        return "corrupt"
    try:
        run.config  # noqa: B018 (read to check)
        status = run.status
        if status == DONE:
            run.verify()
    except (CorruptRunError, OSError):
        return "corrupt"
    return status


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


GARBAGE = (FAILED, "stale", "corrupt")


def collect_garbage(root: Path | None = None, dry_run: bool = False) -> list[tuple[str, str]]:
    """Delete the runs nothing can use (failed, stale and corrupt ones, and folders a crash
    left without a config.json) and the temp files of interrupted writes. Returns
    (run id, why) of each run deleted (or, with ``dry_run``, that would be)."""
    folder = (root or cache_root()) / "runs"
    found = []
    for path in sorted(folder.iterdir()) if folder.exists() else []:
        if not path.is_dir():
            continue
        run = Run(path)
        why = health(run)
        if run.is_locked():
            continue
        if why in GARBAGE:
            found.append((run.id, why))
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
        elif not dry_run:  # a killed write leaves its temp file beside the target
            for tmp in path.rglob(".*.tmp"):
                if tmp.is_file() and time.time() - tmp.stat().st_mtime > 60:
                    tmp.unlink(missing_ok=True)
    return found
