"""The app in a real browser: `streamlit run` on a free localhost port, driven by Debian's
Chromium through Playwright. Analyse a tiny model, see its heatmap, choose k, train, and
download the export. Screenshots of every page go to test-output/screenshots/."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

# One server, one browser and one screenshot folder (module fixtures): one test worker.
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
JOB_TIMEOUT_MS = 15 * 60 * 1000  # a 2-core machine shared with other work can be slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_chromium() -> None:
    """Skip without Debian's chromium (a new user's first test run), unless
    FLOE_REQUIRE_BROWSER=1 (set by .ci/run, which installs it): then its absence fails."""
    if Path(CHROMIUM).exists():
        return
    message = "Debian's chromium is missing: apt-get install -y chromium (.ci/run does it)"
    if os.environ.get("FLOE_REQUIRE_BROWSER") == "1":
        pytest.fail(message + "; FLOE_REQUIRE_BROWSER=1 asks for the browser test")
    pytest.skip(message + "; set FLOE_REQUIRE_BROWSER=1 to make this an error")


@contextlib.contextmanager
def app_server(cache: Path):
    """`streamlit run app.py` on a free port over ``cache``; stopped (with its jobs) after."""
    require_chromium()
    port = free_port()
    env = {**os.environ, "FLOE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(cache / "streamlit.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port",
                                 str(port), "--server.headless", "true"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start: {(cache / 'streamlit.log').read_text()}") from None
            time.sleep(0.5)
    try:
        yield url
    finally:
        from floe.store import jobs
        for job in jobs.active_jobs(cache):
            jobs.cancel(job["id"], cache, grace=5)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """The app with its own empty cache (converted embedded models shared)."""
    cache = tmp_path_factory.mktemp("app-cache")
    (cache / "models").symlink_to(Path(os.environ["FLOE_CACHE"]) / "models", target_is_directory=True)
    with app_server(cache) as url:
        yield {"url": url, "cache": cache, "model": str(tiny_model_dir)}


@pytest.fixture(scope="module")
def browser():
    require_chromium()  # before the launch: a machine without it skips, not errors
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser):
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(120_000)
    yield tab
    context.close()


def open_page(page, server, path: str = "") -> None:
    page.goto(f"{server['url']}/{path}")
    page.wait_for_selector("h1")
    settle(page)


def settle(page) -> None:
    """Wait until the script run triggered by the last action has finished."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")
    # Widgets whose code loads lazily show a skeleton first.
    page.wait_for_function("!document.querySelector('[data-testid^=stSkeleton]')")


def shot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport to it."""
    settle(page)
    height = page.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(1000, min(int(height), 6000))})
    page.wait_for_timeout(500)  # plotly redraws at the new size
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})


def wait_for_card(page, status: str, label: str, timeout: float = 120_000) -> None:
    """Wait until a job card reads `<status> · <label...>` (the app polls its jobs)."""
    page.wait_for_function(
        "([status, label]) => [...document.querySelectorAll('[data-testid=stMarkdownContainer]')]"
        ".some(e => e.innerText.includes(status + ' · ' + label))", arg=[status, label], timeout=timeout)


def k_slider(page):
    return page.locator("[data-testid='stSlider']", has_text="k: number of layers to adapt").get_by_role("slider")


def set_k(page, k: int) -> None:
    """Keyboard on the slider, as a user would: Home is k = 1, each arrow one more."""
    k_slider(page).focus()
    page.keyboard.press("Home")
    settle(page)
    for _ in range(k - 1):
        page.keyboard.press("ArrowRight")
        settle(page)


def test_analyse_see_heatmap_choose_k_train_and_download(page, server):
    open_page(page, server)
    assert page.get_by_text("No runs yet").is_visible()
    shot(page, "0-runs-empty")

    # An uploaded data file is size-checked, stored under a safe name and previewed.
    page.get_by_text("upload a file", exact=True).click()
    upload = server["cache"].parent / "my data (v1).jsonl"
    upload.write_text("\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(3)))
    page.locator("[data-testid='stFileUploader'] input[type=file]").set_input_files(str(upload))
    page.get_by_text("3 usable examples").wait_for()
    (stored,) = (server["cache"] / "uploads").iterdir()
    assert stored.name.endswith("-my_data_v1.jsonl") and stored.read_text() == upload.read_text()
    shot(page, "0b-runs-upload")
    page.get_by_text("embedded set", exact=True).click()

    # A tiny model from a local folder, the embedded general set, the quick settings.
    page.get_by_text("local folder", exact=True).click()
    page.get_by_label("Model folder").fill(server["model"])
    page.get_by_label("Model folder").press("Enter")
    page.get_by_text("llama, 4 layers").wait_for()
    page.get_by_role("button", name="Start analysis").click()
    wait_for_card(page, "running", "analyse")
    page.locator("[data-testid='stProgress']").first.wait_for()
    shot(page, "1-runs-job-running")
    wait_for_card(page, "done", "analyse", JOB_TIMEOUT_MS)
    settle(page)
    shot(page, "2-runs-done")

    open_page(page, server, "Heatmaps")
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.locator(".js-plotly-plot").count() == 3  # heatmap, head and neuron masks
    shot(page, "3-heatmaps")

    from floe.app import common
    from floe.store.runs import list_runs
    (score,) = [r for r in list_runs(server["cache"]) if r.kind == "score"]
    ranking = common.layers(score)["ranking"]

    open_page(page, server, "Train_export")
    set_k(page, 2)
    chosen = sorted(ranking[:2])
    page.get_by_text(f"Adapted layers (2): {', '.join(map(str, chosen))}").wait_for()
    with page.expect_download() as download:
        page.get_by_role("button", name="Layer list (JSON)").click()
    layer_list = json.loads(Path(download.value.path()).read_text())
    assert layer_list["layers"] == chosen and layer_list["score_run"] == score.id
    shot(page, "4-train-choice")

    page.get_by_role("button", name="Start sparse training").click()
    wait_for_card(page, "running", "train")
    wait_for_card(page, "done", "train", JOB_TIMEOUT_MS)
    open_page(page, server, "Train_export")  # the k slider starts at its default again
    set_k(page, 2)
    page.get_by_role("button", name="config.yaml").wait_for()
    assert not (server["cache"] / "exports").exists()  # built when a download asks for it, not before
    with page.expect_download() as download:
        page.get_by_role("button", name="config.yaml").click()
    config = yaml.safe_load(Path(download.value.path()).read_text())
    assert config["layers"] == chosen and config["model"]["model"] == server["model"]
    with page.expect_download() as download:
        page.get_by_role("button", name="peft_adapter_config.json").click()
    peft = json.loads(Path(download.value.path()).read_text())
    adapted = {k for k in range(4) if re.fullmatch(peft["target_modules"], f"model.layers.{k}.mlp.up_proj")}
    assert adapted == set(chosen)
    shot(page, "5-train-export")

    for name, path in (("6-stability", "Stability"), ("7-refinement", "Refinement"),
                       ("8-rank-search", "Rank_search")):
        open_page(page, server, path)
        assert not page.locator("[data-testid='stException']").count()
        shot(page, name)


def test_the_recommendation_panel_and_the_export_on_request(page, tmp_path):
    """Fixture runs (nothing trains): a score run whose FLoE ranking points away from the
    layers a finished probe measured as useful, and a training of FLoE's top 2. The panel
    recommends the measured layers on Runs, Heatmaps and Train & export, says how far FLoE's
    ranking is from them and trains them on another data seed; the probe's set search draws
    the predicted loss per k under the k slider; the export is built when a download asks
    for it."""
    import app_fixtures as fx
    from test_app_validation import make_probe_run

    from floe.app import training
    model = str(fx.make_model_folder(tmp_path / "tiny-model", n_layers=12))
    score = fx.make_score_run(tmp_path, model, n_layers=12,
                              rankings={"floe": list(range(12)), "floe-no-refine": list(range(12))})
    fx.add_set_search(make_probe_run(tmp_path, score, {1: [0.01 * (k + 1) for k in range(12)],
                                                       2: [0.01 * (k + 1) + 0.002 for k in range(12)]}))
    train = fx.make_train_run(tmp_path, score, "floe", 2)
    with app_server(tmp_path) as url:
        server = {"url": url}
        for name, path in (("r1-runs-recommendation", ""), ("r2-heatmaps-recommendation", "Heatmaps"),
                           ("r3-train-recommendation", "Train_export")):
            open_page(page, server, path)
            panel = page.locator("[class*='st-key-recommendation-']")
            panel.get_by_text("Recommendation: Adapt layers").wait_for()
            text = panel.inner_text()
            assert "Measured on this model and data" in text and "points away from the useful layers" in text
            assert "(4 of 8 in common)" in text or "(0 of 5 in common)" in text  # k 8 here, 5 on Heatmaps
            assert "Fair: the training draws data seed 43, not the probe's 42" in text
            assert panel.get_by_role("button", name="Train the recommendation").is_enabled()
            assert not page.locator("[data-testid='stException']").count(), name
            panel.scroll_into_view_if_needed()
            shot(page, name)
            panel.screenshot(path=str(SHOTS / f"{name}-panel.png"))

        # Train & export, under the k slider: each ranking's predicted loss per k (the probe's
        # set search), the suggested k marked and said how it was computed.
        caption = page.get_by_text("Suggested k (dashed line): k = 6 of 12", exact=False).last
        caption.wait_for()
        assert "reaches 90% of the all-layer gain (0.1000)" in caption.inner_text()
        assert "Slider at k = 8" in caption.inner_text()
        assert page.locator(".js-plotly-plot").count() == 2  # the curve, the choice's heatmap
        page.locator(".js-plotly-plot").first.screenshot(path=str(SHOTS / "r3-train-k-curve.png"))

        # FLoE's own top 2 (policy floe, k 2): its finished training's export, on request.
        page.locator("[data-testid='stRadio']").get_by_text("FLoE (with refinement)", exact=True).click()
        settle(page)
        set_k(page, 2)
        page.get_by_role("button", name="config.yaml").wait_for()
        assert not (tmp_path / "exports").exists()
        with page.expect_download() as download:
            page.get_by_role("button", name="config.yaml").click()
        config = yaml.safe_load(Path(download.value.path()).read_text())
        assert config["layers"] == training.chosen_layers(score, "floe", 2)
        assert (tmp_path / "exports" / train.id).is_dir()

        open_page(page, server, "Validation")  # one summary sentence, and the verdict column
        page.get_by_text("FLoE's ranking: points away from the useful layers").wait_for()
        shot(page, "r4-validation")
        open_page(page, server, "Compare")
        assert not page.locator("[data-testid='stException']").count()
        shot(page, "r5-compare")


def test_every_page_with_32_layer_runs(page, tmp_path):
    """Pages full of data (fixture runs shaped like a 7B model) render in the browser."""
    from app_fixtures import build_cache_7b_shape
    build_cache_7b_shape(tmp_path)
    with app_server(tmp_path) as url:
        for name, path, charts in (("f1-runs", "", 0), ("f2-heatmaps", "Heatmaps", 3),
                                   ("f3-stability", "Stability", 1), ("f4-refinement", "Refinement", 1),
                                   ("f5-rank-search", "Rank_search", 2), ("f6-train-export", "Train_export", 2),
                                   ("f7-validation", "Validation", 0), ("f8-compare", "Compare", 0)):
            open_page(page, {"url": url}, path)
            if charts:
                page.locator(".js-plotly-plot").nth(charts - 1).wait_for()
            assert page.locator(".js-plotly-plot").count() == charts, name
            assert not page.locator("[data-testid='stException']").count(), name
            shot(page, name)
