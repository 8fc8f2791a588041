"""Time to the first real heatmap, as a newcomer sees it: a fresh, empty cache (the embedded
SmolLM2 not yet converted), `streamlit run app.py`, one click on the one-click analysis
button in Chromium, then the Heatmaps page until its plot is drawn.

    .venv/bin/python -m bench.bench_first_heatmap [--keep-cache DIR]

Needs Debian's chromium (/usr/bin/chromium) and playwright (requirements-dev.txt).
Prints the wall times (app start, click -> job done, click -> heatmap drawn) and the
scoring stages from the run, and saves a screenshot next to the JSON result.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import RESULTS, save

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
BUTTON = "Analyse SmolLM2-135M on the general set (quick)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(cache: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "FLOE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    log = open(cache.parent / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port",
                             str(port), "--server.headless", "true"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("streamlit did not start; see streamlit.log") from None
            time.sleep(0.25)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep-cache", default=None, help="use (and keep) this empty folder as the cache")
    ap.add_argument("--timeout-min", type=float, default=20)
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    base = Path(a.keep_cache or tempfile.mkdtemp(prefix="floe-first-"))
    cache = base / "cache"
    cache.mkdir(parents=True, exist_ok=False)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc, url = _start_app(cache)
    app_start = time.perf_counter() - t0
    timeout_ms = a.timeout_min * 60_000
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(url)
            button = page.get_by_role("button", name=BUTTON)
            button.wait_for()
            clicked = time.perf_counter()
            button.click()
            page.get_by_role("link", name="See the heatmap").wait_for(timeout=timeout_ms)
            done = time.perf_counter() - clicked
            page.get_by_role("link", name="See the heatmap").click()
            page.locator(".js-plotly-plot").first.wait_for()
            drawn = time.perf_counter() - clicked
            RESULTS.mkdir(exist_ok=True)
            shot = RESULTS / "first_heatmap.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        from floe.store import jobs
        for job in jobs.active_jobs(cache):
            jobs.cancel(job["id"], cache, grace=5)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    timings = {}
    for run in (cache / "runs").glob("score-*"):
        timings = json.loads((run / "timings.json").read_text())
    result = {"cpu_count": os.cpu_count(), "load_before": load_before,
              "app_start_s": app_start, "click_to_job_done_s": done,
              "click_to_heatmap_s": drawn, "scoring_stages_s": timings, "screenshot": str(shot)}
    print(json.dumps(result, indent=2))
    save("first_heatmap", result)


if __name__ == "__main__":
    main()
