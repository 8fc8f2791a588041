"""A single-layer probe shared by two local worker processes against the same probe from one
worker (issue 22's "done when"): identical gains, and the wall time of each.

    .venv/bin/python bench/bench_shared_probe.py postgresql://USER@HOST/DB [--layers 0,1,...]

One worker, then two workers at once, each with ``--threads`` threads (default 1), every
worker in a fresh cache of its own (as on a machine of its own; the converted embedded model
is shared read-only). Both grids get a fresh study name, so nothing is reused. The probe is
``floe probe --schedule cells`` at its default budget on SmolLM2-135M and the general set.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from common import fresh_cache, save

ROOT = Path(__file__).resolve().parent.parent


def _workers(url: str, study: str, count: int, threads: int, layers: str | None) -> dict:
    """Start ``count`` workers at once on caches of their own; wait; their probe.json and times."""
    args = [sys.executable, "-m", "floe", "probe", "--model", "smollm2-135m", "--data", "general",
            "--schedule", "cells", "--seeds", "42", "--device", "cpu", "--storage", url,
            "--study-name", study, "--json", "--quiet"] + (["--layers", layers] if layers else [])
    start = time.perf_counter()
    procs = []
    for _ in range(count):
        env = {**os.environ, "FLOE_CACHE": str(fresh_cache("floe-shared-")), "OMP_NUM_THREADS": str(threads),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        procs.append(subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker of {study} failed: exit codes {[p.returncode for p in procs]}")
    probes = [json.loads(Path(json.loads(o)["path"], "probe.json").read_text())
              for o in outs]
    return {"workers": count, "threads_each": threads, "wall_seconds": round(wall, 1), "probes": probes}


def _cells_by_worker(url: str, study: str) -> dict[str, int]:
    from floe.experiments.shared import shared_progress
    counts: dict[str, int] = {}
    for cell in shared_progress(url, study):
        counts[cell["worker"]] = counts.get(cell["worker"], 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--layers", help="layers to probe (default: every layer)")
    # One thread per worker by default: the same arithmetic in every worker (a different thread
    # count may round differently), and two workers on a 2-core machine stand for two machines.
    parser.add_argument("--threads", type=int, default=1)
    a = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    one = _workers(a.url, f"bench-one-{tag}", 1, a.threads, a.layers)
    two = _workers(a.url, f"bench-two-{tag}", 2, a.threads, a.layers)
    gains_one = one["probes"][0]["gain"]
    same_bytes = len({json.dumps(p, sort_keys=True) for p in two["probes"]}) == 1
    result = {
        "model": "smollm2-135m", "data": "general", "layers": len(gains_one),
        "one_worker_seconds": one["wall_seconds"], "two_workers_seconds": two["wall_seconds"],
        "speedup": round(one["wall_seconds"] / two["wall_seconds"], 2),
        "gains_identical": gains_one == two["probes"][0]["gain"],
        "max_abs_gain_difference": max(abs(x - y) for x, y in zip(gains_one, two["probes"][0]["gain"])),
        "two_workers_wrote_same_probe_json": same_bytes,
        "cells_per_worker": _cells_by_worker(a.url, f"bench-two-{tag}"),
        "threads": {"one": one["threads_each"], "two": two["threads_each"]},
        "gain": gains_one,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "gain"}, indent=2))
    save("shared_probe", result)


if __name__ == "__main__":
    main()
