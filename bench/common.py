"""Helpers shared by the benchmarks: timing medians, peak RSS in a fresh process, results."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# The GPU scripts' model shapes (random weights from a LlamaConfig): LLaMA-2-7B, as in
# docs/plan.md, and a small one for smoke tests anywhere.
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                max_position_embeddings=4096)
LLAMA_TINY = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                  num_attention_heads=4, num_key_value_heads=4, vocab_size=1000,
                  max_position_embeddings=1024)


def fresh_cache(prefix: str) -> Path:
    """Point FLOE_CACHE at a new empty cache (nothing reused: every stage is timed for
    real) that shares the converted embedded models of the project's cache."""
    import tempfile

    from floe.store.runs import cache_root
    shared_models = cache_root() / "models"
    fresh = Path(tempfile.mkdtemp(prefix=prefix))
    (fresh / "models").symlink_to(shared_models, target_is_directory=True)
    os.environ["FLOE_CACHE"] = str(fresh)
    return fresh


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    """Peak resident set since the process started or since the last ``reset_peak_rss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ``clear_refs`` 5), so a later peak is the
    training step's and not the model-loading transient's. False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_subprocess(module: str, *args: str) -> dict:
    """Run ``python -m module args`` in a fresh process; it prints one JSON line last."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                         env=env, cwd=Path(__file__).resolve().parent.parent, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict:
    """What a timing depended on: torch's threads, OMP_NUM_THREADS and the load average."""
    import torch
    return {"torch_threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
            "load": os.getloadavg()}


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
