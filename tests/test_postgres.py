"""Workers sharing a probe, a compare and a rank search through a real PostgreSQL server.

A throwaway server (initdb into a temporary folder, a free port on 127.0.0.1, its socket in
that folder; as root it runs as the ``postgres`` or ``nobody`` user, since PostgreSQL refuses
root) serves the tests of this module and is stopped at the end, even after a failure. Each
worker is a ``floe`` process with a cache of its own, as on another machine. Without
PostgreSQL's binaries the tests are skipped with the reason, unless FLOE_REQUIRE_POSTGRES=1
(as .ci/run sets after installing Debian's ``postgresql``): then they fail.
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import app_fixtures as fx
import optuna
import pytest
from helpers import RANKINGS, default_warmup_key
from optuna.trial import TrialState

from floe.cli import main
from floe.experiments.shared import RESULT, WORKER, cell_of, shared_progress
from floe.store.runs import DONE, list_runs
from floe.store.storage import open_storage

# One server and one scenario (the module fixtures) for all three tests: one test worker.
pytestmark = pytest.mark.xdist_group("postgres")
ROOT = Path(__file__).resolve().parent.parent
RUNNER = "import sys; from floe.cli import main; sys.exit(main(sys.argv[1:]))"  # as tests/test_crash.py
BEAT = "2"  # heartbeat seconds: a killed worker's cell is taken again 8 s after its last beat
PASSWORD = "pg-secret"  # the server trusts loopback; the password is only there to be hidden


# --------------------------------------------------------------------------- the server
def _binary(name: str) -> str | None:
    """A PostgreSQL program: on PATH, or where Debian puts it (/usr/lib/postgresql/<v>/bin)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return versions[-1] if versions else None


def _server_user() -> tuple[list[str], int | None, int | None]:
    """(command prefix, uid, gid) to run the server: as is, or, as root, as an unprivileged user."""
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], entry.pw_uid, entry.pw_gid
    pytest.fail("running as root with neither a 'postgres' nor a 'nobody' user to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """The URL of a fresh PostgreSQL server on loopback; stopped and deleted afterwards."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        reason = "PostgreSQL's initdb and pg_ctl were not found (Debian: apt-get install postgresql)"
        if os.environ.get("FLOE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"FLOE_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    prefix, uid, gid = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="floe-pg-"))  # not under pytest's root-only tmp folders
    if uid is not None:
        os.chown(folder, uid, gid)
    data, port = folder / "data", _free_port()
    log = folder / "server.log"
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-U", "floe", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, cwd=folder)
        options = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"],
                       check=True, capture_output=True, cwd=folder)
        yield f"postgresql://floe:{PASSWORD}@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as e:
        server_log = log.read_text() if log.exists() else ""
        pytest.fail(f"could not start PostgreSQL: {e.stderr.decode(errors='replace')}{server_log}")
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                       cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- workers
def _cache(root: Path, name: str) -> Path:
    """A worker's own cache, as on a machine of its own."""
    folder = root / name
    folder.mkdir()
    return folder


def _start(cache: Path, args: list[str], **env: str) -> subprocess.Popen:
    """``floe ARGS`` in a fresh interpreter over ``cache`` (a fork of pytest would inherit
    torch's thread pool, which is not fork-safe)."""
    child = {**os.environ, "FLOE_CACHE": str(cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
             "FLOE_HEARTBEAT_SECONDS": BEAT, **env}
    return subprocess.Popen([sys.executable, "-c", RUNNER, *args, "--quiet"], env=child, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"a worker hung: {proc.args}") from None
    assert "Traceback" not in err and PASSWORD not in err, err
    return proc.returncode, err


def _storage_only(monkeypatch, capsys, cache: Path, args: list[str]) -> None:
    """The same command on a machine that trains nothing (here, in this process)."""
    monkeypatch.setenv("FLOE_CACHE", str(cache))
    monkeypatch.setenv("FLOE_HEARTBEAT_SECONDS", BEAT)
    code = main([*args, "--quiet", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert PASSWORD not in out.out + out.err
    assert not [r for r in list_runs(cache) if r.kind in ("train", "eval")], "the storage-only run trained"


def _artifact(cache: Path, kind: str, name: str) -> bytes:
    (run,) = [r for r in list_runs(cache) if r.kind == kind]
    assert run.status == DONE
    return run.file(name).read_bytes()


def _trained(caches: list[Path]) -> dict[str, list[str]]:
    """Finished training runs, each with the caches that hold it."""
    where: dict[str, list[str]] = {}
    for cache in caches:
        for run in list_runs(cache):
            if run.kind == "train" and run.status == DONE:
                where.setdefault(run.id, []).append(cache.name)
    return where


# --------------------------------------------------------------------------- the workers
def _kill_mid_cell(url: str, study_name: str, victim: subprocess.Popen, others: list[subprocess.Popen]) -> None:
    """SIGKILL ``victim`` while it holds a cell, once the other workers have drawn cells too
    (all three run at once)."""
    storage = open_storage(url)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
        except KeyError:  # no worker has created the study yet
            trials = []
        drawn = {t.user_attrs.get(WORKER, "").rpartition(":")[2]: t.state for t in trials}
        holding = {pid for pid, state in drawn.items() if state == TrialState.RUNNING}
        if str(victim.pid) in holding and all(str(p.pid) in drawn for p in others):
            victim.send_signal(signal.SIGKILL)
            return
        assert victim.poll() is None, "the worker to kill ended before it was killed"
        time.sleep(0.2)
    raise AssertionError("the three workers never held cells at once")


@pytest.fixture(scope="module")
def shared(postgres, tiny_args, tiny_model_dir, tmp_path_factory):
    """The probe (three workers, one SIGKILLed mid-cell and started again), the compare and
    the rank search (two workers each), all at once, each worker on a cache of its own:
    experiment -> (its arguments, its workers' caches, the killed worker's pid)."""
    root, common = tmp_path_factory.mktemp("workers"), [a for a in tiny_args if a != "--quiet"]
    caches = {name: _cache(root, name) for name in "abcdefghij"}
    for name in "efg":  # the score run, copied to every machine of the compare
        score = fx.make_score_run(caches[name], str(tiny_model_dir), rankings=RANKINGS,
                                  warmup=default_warmup_key(tiny_model_dir)).id
    args = {
        "probe": ["probe", *common, "--layers", "1,2,3", "--seeds", "1,2", "--lr", "1e-2",
                  "--storage", postgres, "--study-name", "probe"],
        "compare": ["compare", "--score-run", score, *common, "--ks", "2", "--policies", "floe", "--seeds", "1",
                    "--tasks", "", "--lr", "1e-2", "--storage", postgres, "--study-name", "compare"],
        "search": ["search-rank", *common, "--layers", "1,3", "--r-min", "2", "--r-max", "3", "--n-trials", "3",
                   "--no-prune", "--lr", "1e-2", "--storage", postgres, "--study-name", "search"]}
    start = time.monotonic()
    killed, others = _start(caches["a"], args["probe"]), [_start(caches[n], args["probe"]) for n in "bc"]
    others += [_start(caches[n], args["compare"]) for n in "ef"] + [_start(caches[n], args["search"]) for n in "hi"]
    _kill_mid_cell(postgres, "probe", killed, others[:2])
    assert _finish(killed)[0] == -signal.SIGKILL
    others.append(_start(caches["a"], args["probe"]))  # the killed worker, started again on its own cache
    for proc in others:
        code, err = _finish(proc)
        assert code == 0, err
    print(f"\nnine workers of three experiments (one killed, one restarted): {time.monotonic() - start:.0f} s")
    return {"probe": (args["probe"], [caches[n] for n in "abcd"], killed.pid),
            "compare": (args["compare"], [caches[n] for n in "efg"], None),
            "search": (args["search"], [caches[n] for n in "hij"], None)}


# --------------------------------------------------------------------------- the tests
def test_a_probe_shared_by_three_workers_one_killed_mid_cell(shared, postgres, monkeypatch, capsys):
    args, (a, b, c, d), killed = shared["probe"]
    _storage_only(monkeypatch, capsys, d, args)

    # Every worker, and the one that trained nothing, wrote the same probe.json.
    files = {cache.name: _artifact(cache, "probe", "probe.json") for cache in (a, b, c, d)}
    assert len(set(files.values())) == 1, "the workers' probe.json differ"
    probe = json.loads(files["d"])
    assert len(probe["cells"]) == 6 and not probe["partial"] and PASSWORD not in files["d"].decode()
    assert all(len(cell["adapter_sha256"]) == 64 for cell in probe["cells"])

    # Every cell trained once, in one cache: the killed one was trained again elsewhere.
    where = _trained([a, b, c, d])
    assert sorted(where) == sorted(cell["train_run"] for cell in probe["cells"])
    assert all(len(holders) == 1 for holders in where.values()), where
    trials = optuna.load_study(study_name="probe", storage=postgres).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(cell_of(t) for t in complete) == list(range(6))
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]  # the killed worker's trial, once stale
    assert dead.user_attrs[WORKER].endswith(f":{killed}") and RESULT not in dead.user_attrs
    (retry,) = [t for t in complete if cell_of(t) == cell_of(dead)]
    assert retry.system_attrs["failed_trial"] == dead.number  # its grid cell, queued again
    assert retry.system_attrs["grid_id"] == dead.system_attrs["grid_id"]
    assert not retry.user_attrs[WORKER].endswith(f":{killed}")
    progress = shared_progress(postgres, "probe")
    assert [p["state"] for p in progress] == ["done"] * 6
    per_worker = {w: sum(p["worker"] == w for p in progress) for w in {p["worker"] for p in progress}}
    print(f"\ncells trained per worker: {per_worker}")


def test_a_compare_shared_by_two_workers(shared, postgres, monkeypatch, capsys):
    args, caches, _ = shared["compare"]
    _storage_only(monkeypatch, capsys, caches[2], args)
    files = {cache.name: _artifact(cache, "compare", "compare.json") for cache in caches}
    assert len(set(files.values())) == 1, "the workers' compare.json differ"
    assert len({_artifact(cache, "compare", "compare.csv") for cache in caches}) == 1
    summary = json.loads(files["g"])
    assert len(summary["results"]) == 2 and summary["base"]["metrics"]["val_loss"] > 0
    assert summary["config"]["storage"] == postgres.replace(PASSWORD, "***")
    assert all(len(holders) == 1 for holders in _trained(caches).values())
    assert sorted(_trained(caches)) == sorted(r["train_run"] for r in summary["results"])


def test_a_rank_search_shared_by_two_workers(shared, monkeypatch, capsys):
    args, caches, _ = shared["search"]
    _storage_only(monkeypatch, capsys, caches[2], args)
    files = {cache.name: _artifact(cache, "ranksearch", "search.json") for cache in caches}
    assert len(set(files.values())) == 1, "the workers' search.json differ"
    summary = json.loads(files["j"])
    assert summary["n_finished"] >= 3 and summary["best_r"] in (2, 3)
    # A rank is trained once, whichever worker suggested it again.
    where = _trained(caches)
    assert all(len(holders) == 1 for holders in where.values()), where
    complete = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    assert len(where) == len({t["r"] for t in complete})
    assert all("reused_trial" in t for t in complete if t["number"] != min(
        u["number"] for u in complete if u["r"] == t["r"]))
