"""The Runs page's "Shared across workers": a shared probe's cells, their state and worker,
read from the storage whose URL the user types (the run records it without its password).
Pure views on literal rows; the page through streamlit's AppTest on a SQLite study made by
floe.experiments.shared.share_cells with a fake compute (no training)."""
from __future__ import annotations

import json
from pathlib import Path

import artifact_examples as examples
import pytest
from streamlit.testing.v1 import AppTest

from floe import __version__
from floe.app import shared
from floe.store.runs import run_for

ROOT = Path(__file__).resolve().parent.parent
LABELS = [f"layer {k} seed 1" for k in range(5)]
pytestmark = pytest.mark.usefixtures("queued_jobs")  # conftest: jobs queued, not started


def rows_of(*cells: tuple[str, str | None]) -> list[dict]:
    return [{"cell": i, "label": f"c{i}", "state": state, "worker": worker, "trials": 1}
            for i, (state, worker) in enumerate(cells)]


# --------------------------------------------------------------------------- pure views
def test_counts_table_and_cells_per_worker():
    rows = rows_of(("done", "a:1"), ("done", "b:2"), ("done", "a:1"), ("running", "b:2"), ("queued", "c:3"),
                   ("open", None))
    assert shared.counts(rows) == {"done": 3, "running": 1, "waiting": 2}
    table = shared.progress_table(rows)
    assert list(table.columns) == shared.COLUMNS and list(table["state"])[-1] == "open"
    workers = shared.per_worker(rows)
    assert workers.to_dict("records") == [{"worker": "a:1", "done": 2, "running": 0},
                                          {"worker": "b:2", "done": 1, "running": 1}]  # queued: not working
    assert list(shared.per_worker(rows_of(("open", None))).columns) == ["worker", "done", "running"]
    bars = shared.worker_figure(rows).data
    assert [b.name for b in bars] == ["done", "running"] and list(bars[0].y) == [2, 1]


def test_the_url_used_when_the_field_is_empty_never_shows_a_password():
    assert shared.default_url("postgresql://floe:***@db/floe", {}) is None  # must be typed
    assert shared.default_url("sqlite:///x.db", {}) == "sqlite:///x.db"  # nothing was redacted
    env = {shared.STORAGE_ENV: "postgresql://floe:s3cret@db/floe"}
    assert shared.default_url("postgresql://floe:***@db/floe", env) == env[shared.STORAGE_ENV]
    assert "s3cret" not in shared.placeholder(env[shared.STORAGE_ENV])


def test_a_bad_storage_is_one_line_without_the_password(tmp_path):
    bad = shared.read_progress("nosuchdb://floe:s3cret@db/floe", "p")
    assert isinstance(bad, str) and "cannot open the Optuna storage" in bad and "s3cret" not in bad
    assert "\n" not in bad
    missing = tmp_path / "none.db"
    assert shared.read_progress(f"sqlite:///{missing}", "p") == f"no SQLite database at {missing}"
    assert not missing.exists()  # reading never creates a database


# --------------------------------------------------------------------------- fixtures
def make_grid(url: str, monkeypatch) -> None:
    """A probe's 5 cells in a SQLite study: node-a did 2, node-b 1, node-c holds 1, 1 open."""
    from floe.experiments import shared as grid
    from floe.store.storage import open_storage
    storage = open_storage(url)

    def worker(name: str, cells: int) -> None:
        monkeypatch.setattr(grid, "worker_id", lambda: name)
        calls: list[int] = []

        def compute(i: int) -> dict:
            calls.append(i)
            if len(calls) > cells:
                raise KeyboardInterrupt  # the worker stops: its trial fails, its cell is open again
            return {"gain": 0.1 * i}
        with pytest.raises(KeyboardInterrupt):
            grid.share_cells(storage, "my-probe", LABELS, compute)
    worker("node-a:101", 2)
    worker("node-b:202", 1)
    with pytest.warns(UserWarning, match="Heartbeat"):  # a trial held by a live worker
        trial = grid.open_grid(storage, "my-probe", LABELS).ask()
    trial.suggest_categorical(grid.PARAM, list(range(len(LABELS))))
    trial.set_user_attr(grid.WORKER, "node-c:303")


def make_probe_run(root: Path, storage: str | None, study: str | None, seed: int = 1):
    """A probe run in progress whose probe.json records ``storage`` (None: not shared)."""
    run = run_for("probe", {"floe": __version__, "probe": {"seeds": [seed], "test": "shared"}}, root)
    payload = examples.probe_json([0, 1], {seed: [0.1, 0.2]}, partial=True, storage=storage,
                                  config={"probe": {"study_name": study, "storage": storage}})
    run.file("probe.json").write_text(json.dumps(payload))
    run.log(event="start", stage="probe", total_steps=5, resumed_from=0)
    return run


def test_shared_record_of_probe_compare_and_unshared_runs(cache):
    probe = make_probe_run(cache, "postgresql://floe:***@db/floe", None)
    assert shared.shared_record(probe) == {"storage": "postgresql://floe:***@db/floe", "study": probe.id}
    assert shared.shared_record(make_probe_run(cache, None, None, seed=2)) is None
    compare = run_for("compare", {"floe": __version__, "test": "shared"}, cache)
    compare.file("compare.json").write_text(json.dumps(examples.compare_json(
        "score-x", [], config={"storage": "sqlite:///c.db", "study_name": "cmp"})))
    assert shared.shared_record(compare) == {"storage": "sqlite:///c.db", "study": "cmp"}
    assert list(shared.shared_runs([probe, compare])) == [probe.id, compare.id]


# --------------------------------------------------------------------------- the page
def read(at: AppTest, url: str) -> AppTest:
    at.text_input(key="shared:url").input(url)
    next(b for b in at.button if b.label == "Read progress").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_runs_page_shows_a_shared_probe_across_workers(cache, tmp_path, monkeypatch):
    monkeypatch.delenv(shared.STORAGE_ENV, raising=False)
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    make_grid(url, monkeypatch)
    run = make_probe_run(cache, "postgresql://floe:***@db/floe", "my-probe")
    make_probe_run(cache, None, None, seed=2)  # not shared: not offered
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(h.value == "Shared across workers" for h in at.subheader)
    assert at.selectbox(key="shared:run").options == [run.id]

    read(at, "nosuchdb://floe:s3cret@db/floe")  # a bad URL: one line, no password, no table
    (error,) = at.error
    assert "cannot open the Optuna storage" in error.value and "s3cret" not in error.value
    assert len(at.metric) == 0

    read(at, url)
    assert not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Cells done": "3 / 5", "Running": "1", "Waiting": "1"}
    cells = next(d.value for d in at.dataframe if list(d.value.columns) == shared.COLUMNS)
    assert list(cells["label"]) == LABELS
    assert sorted(cells["worker"].dropna()) == ["node-a:101", "node-a:101", "node-b:202", "node-c:303"]
    bars = at.get("plotly_chart")[0].proto.spec
    assert all(name in bars for name in ("node-a:101", "node-b:202", "node-c:303"))
    assert "s3cret" not in str(at.session_state["shared:view"])


def test_the_runs_page_shows_nothing_for_runs_not_shared(cache):
    make_probe_run(cache, None, None)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert not any(h.value == "Shared across workers" for h in at.subheader)
