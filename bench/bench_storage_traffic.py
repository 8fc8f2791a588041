"""Storage traffic of a shared grid (floe.experiments.shared), per cell: SQL statements (each
a round trip), bytes sent (statement text and parameters) and rows and bytes received, for
one worker computing every cell of a fresh study with a probe cell's record as its result
(no training), then for a process that only assembles the results, then for one look of a
waiting worker.

    .venv/bin/python bench/bench_storage_traffic.py postgresql://USER@HOST/DB [--cells 8,32,64]

Counted in this process: SQLAlchemy's cursor events for what is sent, psycopg's fetch
calls for what comes back (repr sizes: an estimate of the wire bytes, not the wire itself).
"""
from __future__ import annotations

import argparse
import json
import time
import uuid

import psycopg
from sqlalchemy import event

from floe.experiments.shared import open_grid, revive_stale, share_cells
from floe.store.storage import open_storage

# A probe cell's record as the study stores it (a real cell's fields and value sizes).
CELL = {"layer": 17, "seed": 42, "train_run": "train-0123456789ab", "adapted": [17],
        "val_loss_before": 2.3456789012345678, "val_loss_after": 2.2345678901234567, "gain": None,
        "train_seconds": 41.23456789, "adapter_sha256": "f" * 64, "steps": 8, "wall_seconds": 44.5678901234}
COUNTS = {"statements": 0, "sent": 0, "rows": 0, "received": 0}


def _count_sent(storage) -> None:
    @event.listens_for(storage.engine, "before_cursor_execute")
    def sent(conn, cursor, statement, parameters, context, executemany):
        COUNTS["statements"] += 1
        COUNTS["sent"] += len(statement) + len(repr(parameters))


def _count_received() -> None:
    def counted(fetch, many: bool):
        def wrapper(self, *args, **kwargs):
            got = fetch(self, *args, **kwargs)
            rows = got if many else ([got] if got is not None else [])
            COUNTS["rows"] += len(rows)
            COUNTS["received"] += sum(len(repr(r)) for r in rows)
            return got
        return wrapper
    psycopg.Cursor.fetchall = counted(psycopg.Cursor.fetchall, True)
    psycopg.Cursor.fetchmany = counted(psycopg.Cursor.fetchmany, True)
    psycopg.Cursor.fetchone = counted(psycopg.Cursor.fetchone, False)


def _since(before: dict) -> dict:
    return {k: COUNTS[k] - before[k] for k in COUNTS}


def measure(url: str, n: int) -> dict:
    storage = open_storage(url)
    _count_sent(storage)
    name, labels = f"traffic-{uuid.uuid4().hex[:8]}", [f"cell {i}" for i in range(n)]
    before, start = dict(COUNTS), time.perf_counter()
    share_cells(storage, name, labels, lambda i: dict(CELL, layer=i))
    computed, wall = _since(before), time.perf_counter() - start
    fresh = open_storage(url)  # what a process that trains nothing reads: no cached trials
    _count_sent(fresh)
    before = dict(COUNTS)
    share_cells(fresh, name, labels, lambda i: dict(CELL, layer=i))
    assembled = _since(before)
    study = open_grid(storage, name, labels)
    study.get_trials(deepcopy=False)  # a waiting worker's study has read every trial before
    before = dict(COUNTS)
    revive_stale(study)
    study.get_trials(deepcopy=False)
    return {"cells": n, "per_cell": {k: round(v / n, 1) for k, v in computed.items()},
            "storage_seconds_per_cell": round(wall / n, 3), "assemble": assembled, "one_look": _since(before),
            "record_bytes": len(json.dumps(CELL))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--cells", default="8,32,64")
    args = parser.parse_args()
    _count_received()
    for n in (int(x) for x in args.cells.split(",")):
        print(json.dumps(measure(args.url, n)))


if __name__ == "__main__":
    main()
