"""Finished runs carried between machines: ``floe runs pack`` writes them to one .tar.gz,
``floe runs unpack`` checks one and adds its runs to this cache (an analysis computed on a
GPU server, browsed on a laptop; a study resumed on a fresh machine).

What travels: each run's config, state, progress log and the files it made, less its resume
checkpoint (``checkpoint/``: optimizer pickles and RNG state, of no use once the run is
done, and never to be unpickled from another machine). Packing the same runs twice writes
the same bytes (fixed order, owners and times), so an archive kept under version control
changes only when its runs do.

What unpack refuses, before it writes anything: a member that is not a plain file under
``runs/<run id>/``, a name that climbs out or is hidden, a file type that could hold a
pickle, a run whose id is not the hash of its config (a renamed or edited run would answer
for another config), and a run that is unfinished or whose artifacts do not match its
manifest. A run the cache holds finished and intact is kept as it is; one it holds
unfinished, failed or corrupt is replaced. Each run lands by one rename, so a killed unpack
leaves no half run behind.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, TypedDict

from floe.store.runs import CONFIG, DONE, LOCK, CorruptRunError, Run, cache_root, health, open_run, read_json, run_id_of

__all__ = ["ALLOWED_SUFFIXES", "ARCHIVE_SUFFIX", "ArchiveError", "Unpacked", "inputs_of", "pack_runs",
           "unpack_runs"]

ARCHIVE_SUFFIX = ".tar.gz"
# JSON, logs, tables, safetensors weights and Optuna's SQLite study: data, never code or pickles.
ALLOWED_SUFFIXES = (".json", ".jsonl", ".csv", ".safetensors", ".db", ".txt", ".yaml", ".md")
_LEFT_BEHIND = ("checkpoint",)  # resume state: pickled optimizer, meaningless once done
_RUN_ID = re.compile(r"^[a-z][a-z_]*-[0-9a-f]{12}$")


class ArchiveError(ValueError):
    """An archive that cannot be written or read as asked, said in one line."""


class Unpacked(TypedDict):
    """What ``unpack_runs`` did with each run of the archive."""
    added: list[str]
    replaced: list[str]  # held here unfinished, failed or corrupt
    kept: list[str]  # held here finished and intact already
    busy: list[str]  # held here by a live process: left alone


# --------------------------------------------------------------------------- pack
def inputs_of(run: Run) -> list[str]:
    """The runs this run was computed from: the run ids its config names (a score run's
    warm-up, a compare's score and probe runs) that its cache holds."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and _RUN_ID.match(value) and value != run.id:
            if (run.path.parent / value / CONFIG).exists():
                found.add(value)

    walk(run.config)
    return sorted(found)


def _with_inputs(runs: list[Run]) -> list[Run]:
    """``runs`` and, transitively, every run they were computed from."""
    seen = {r.id: r for r in runs}
    todo = list(runs)
    while todo:
        for run_id in inputs_of(todo.pop()):
            if run_id not in seen:
                seen[run_id] = Run(runs[0].path.parent / run_id)
                todo.append(seen[run_id])
    return [seen[k] for k in sorted(seen)]


def _finished(run_id: str, root: Path) -> Run:
    try:
        run = open_run(run_id, root)
    except (FileNotFoundError, ValueError) as e:
        raise ArchiveError(str(e)) from None
    status = health(run)
    if status != DONE:
        raise ArchiveError(f"run {run_id} is {status}: only finished, intact runs are packed")
    return run


def _files(run: Run) -> list[Path]:
    """The files of ``run`` that travel, in a fixed order."""
    files = []
    for path in sorted(run.path.rglob("*")):
        rel = path.relative_to(run.path)
        if not path.is_file() or rel.parts[0] in _LEFT_BEHIND or path.name == LOCK or path.name.startswith("."):
            continue
        if not path.name.endswith(ALLOWED_SUFFIXES):  # unpack would refuse the archive
            raise ArchiveError(f"run {run.id}: {rel} is not a data file unpack accepts (allowed: "
                               f"{', '.join(ALLOWED_SUFFIXES)})")
        files.append(path)
    return files


def _archive_path(path: str | Path, must_exist: bool) -> Path:
    path = Path(path).expanduser()
    if not path.name.endswith(ARCHIVE_SUFFIX):
        raise ArchiveError(f"{path}: a run archive is a {ARCHIVE_SUFFIX} file")
    if must_exist and not path.is_file():
        raise ArchiveError(f"{path}: no such archive")
    if not must_exist and not path.parent.is_dir():
        raise ArchiveError(f"{path.parent}: no such folder to write the archive in")
    return path


def pack_runs(run_ids: list[str], dest: str | Path, root: Path | None = None,
              with_inputs: bool = False) -> list[str]:
    """Write the finished runs ``run_ids`` (and with ``with_inputs`` the runs they were
    computed from) to the archive ``dest``, atomically. Returns the run ids packed."""
    root = root or cache_root()
    if not run_ids:
        raise ArchiveError("say which runs to pack: floe runs pack RUN [RUN ...] --archive FILE.tar.gz")
    dest = _archive_path(dest, must_exist=False)
    runs = [_finished(i, root) for i in dict.fromkeys(run_ids)]
    if with_inputs:  # the inputs checked too; the runs asked for already are
        asked = {r.id for r in runs}
        runs = [r if r.id in asked else _finished(r.id, root) for r in _with_inputs(runs)]
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for run in runs:
                finished = int(run.state.get("finished") or 0)
                for path in _files(run):
                    info = tarfile.TarInfo(f"runs/{run.id}/{path.relative_to(run.path).as_posix()}")
                    info.size, info.mtime, info.mode = path.stat().st_size, finished, 0o644
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep the archive from whoever it is for
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return [r.id for r in runs]


# --------------------------------------------------------------------------- unpack
def _member_run(member: tarfile.TarInfo) -> str:
    """The run id a member belongs to; an ArchiveError for anything unpack must not write."""
    parts = PurePosixPath(member.name).parts
    if not member.isfile():
        raise ArchiveError(f"{member.name}: not a plain file (links and devices are refused)")
    if len(parts) < 3 or parts[0] != "runs" or not _RUN_ID.match(parts[1]):
        raise ArchiveError(f"{member.name}: not a file of a run (runs/<kind>-<hash>/...)")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts[2:]):
        raise ArchiveError(f"{member.name}: a hidden or climbing file name")
    if not parts[-1].endswith(ALLOWED_SUFFIXES):
        raise ArchiveError(f"{member.name}: a file type runs do not hold as data (allowed: "
                           f"{', '.join(ALLOWED_SUFFIXES)})")
    return parts[1]


def _extract(src: Path, staging: Path) -> list[str]:
    """Write every run of the archive under ``staging``, once all its member names are
    checked; the run ids, sorted."""
    runs: set[str] = set()
    try:
        with tarfile.open(src, mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                runs.add(_member_run(member))
            for member in members:
                path = staging.joinpath(*PurePosixPath(member.name).parts[1:])
                path.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as f, open(path, "wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(f, out)
                os.utime(path, (member.mtime, member.mtime))  # the run's own dates, for listings
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArchiveError(f"{src}: not a readable {ARCHIVE_SUFFIX} archive ({e})") from None
    if not runs:
        raise ArchiveError(f"{src}: the archive holds no runs")
    return sorted(runs)


def _check_run(run: Run) -> None:
    """An unpacked run answers for its own config, and is finished and intact."""
    kind = run.id.split("-", 1)[0]
    try:
        config = read_json(run.file(CONFIG))
    except CorruptRunError as e:
        raise ArchiveError(f"run {run.id}: {e}") from None
    if not isinstance(config, dict) or config.get("kind") != kind or \
            run_id_of(kind, {k: v for k, v in config.items() if k != "kind"}) != run.id:
        raise ArchiveError(f"run {run.id}: its config does not hash to its id (renamed or edited)")
    try:
        run.verify()
    except CorruptRunError as e:
        raise ArchiveError(str(e)) from None


def _land(staged: Run, target: Run, done: Unpacked) -> None:
    """Move a checked run into the cache, unless it holds that run finished or in use."""
    if target.path.exists():
        if target.is_locked():
            done["busy"].append(target.id)
            return
        if health(target) == DONE:
            done["kept"].append(target.id)
            return
        shutil.rmtree(target.path)
        done["replaced"].append(target.id)
    else:
        done["added"].append(target.id)
    os.rename(staged.path, target.path)
    finished = target.file(CONFIG).stat().st_mtime
    os.utime(target.path, (finished, finished))


def unpack_runs(src: str | Path, root: Path | None = None) -> Unpacked:
    """Check the archive ``src`` and add its runs to the cache ``root``."""
    src = _archive_path(src, must_exist=True)
    folder = (root or cache_root()) / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    done: Unpacked = {"added": [], "replaced": [], "kept": [], "busy": []}
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".unpack-") as staging:  # off runs/: gc never sees it
        staged = [Run(Path(staging) / run_id) for run_id in _extract(src, Path(staging))]
        for run in staged:
            _check_run(run)
        for run in staged:  # every run checked: only now does the cache change
            _land(run, Run(folder / run.id), done)
    return done
