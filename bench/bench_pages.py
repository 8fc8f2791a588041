"""Page render times from cache/ for 32-layer runs (the app's bar: under a second per page).

A temporary cache gets runs shaped like a 7B model (32 layers, 32 heads, 11,008 neurons):
four score runs, a 100/70/30 % study, a training run with an evaluation, a rank search and
a comparison. Each page is rendered with streamlit's AppTest (the script run a browser
session triggers, without the websocket): the first render (imports, cold caches) and
the median of warm reruns. Run: ``.venv/bin/python -m bench.bench_pages``.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PAGES = [None, "pages/1_Heatmaps.py", "pages/2_Stability.py", "pages/3_Refinement.py",
         "pages/4_Rank_search.py", "pages/5_Train_export.py"]
REPEATS = 5


def name_of(page: str | None) -> str:
    return page or "app.py"


def main() -> dict:
    import shutil

    from app_fixtures import build_cache_7b_shape
    from streamlit.testing.v1 import AppTest

    from bench.common import save
    root = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    os.environ.update(FLOE_CACHE=str(root), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    start = time.perf_counter()
    results_shape = build_cache_7b_shape(root)
    results = {"cache_build_s": time.perf_counter() - start, "shape": results_shape, "pages": {}}
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    start = time.perf_counter()
    at.run()  # a server process pays its imports once (torch via the CLI's parser)
    results["process_first_render_s"] = round(time.perf_counter() - start, 3)
    print(f"first render in a fresh process (imports): {results['process_first_render_s']:.2f} s")
    for page in PAGES:
        if page:
            at.switch_page(page)
        start = time.perf_counter()
        at.run()
        first = time.perf_counter() - start
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        assert len(at.get("plotly_chart")) >= (0 if page is None else 1), name_of(page)
        warm = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            at.run()
            warm.append(time.perf_counter() - start)
        name = name_of(page)
        results["pages"][name] = {"first_s": round(first, 3), "warm_median_s": round(statistics.median(warm), 3),
                                  "warm_max_s": round(max(warm), 3)}
        print(f"{name:28s} first {first:6.3f} s   warm median {statistics.median(warm):6.3f} s "
              f"(max {max(warm):.3f} s)")
    results["load_average"] = os.getloadavg()
    print(f"saved {save('pages', results)}")
    shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
