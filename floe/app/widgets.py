"""Streamlit pieces the app's pages share: page frame, run pickers, option forms, job launch
and the live job panel. Pages lay these out; data comes from the page modules of
``floe.app``, jobs from ``floe.store.jobs``. The only module of floe that imports Streamlit."""
from __future__ import annotations

import re
from itertools import groupby

import streamlit as st

from floe.app import common, forms, recommend
from floe.app.plan import launch_plan
from floe.app.runs import job_view
from floe.store import jobs
from floe.store.runs import CorruptRunError, Run, RunLockedError

__all__ = ["DEFAULT_DATA", "DEFAULT_MODEL", "PAGES", "POLL_S", "QUICK", "QUICK_EVAL", "QUICK_TIME",
           "RESULT_PAGES", "cpu_only", "delete_runs", "empty", "job_panel", "launcher",
           "layer_count_slider", "md", "option_widgets", "page", "pick_run", "plan_caption",
           "quick_analyse_button", "quick_args", "recommendation_panel", "show_error", "start_job"]

PAGES = [("app.py", "Runs", ":material/list:"),
         ("pages/1_Heatmaps.py", "Heatmaps", ":material/grid_on:"),
         ("pages/2_Stability.py", "Stability", ":material/show_chart:"),
         ("pages/3_Refinement.py", "Refinement", ":material/swap_vert:"),
         ("pages/4_Rank_search.py", "Rank search", ":material/tune:"),
         ("pages/5_Train_export.py", "Train & export", ":material/download:"),
         ("pages/6_Validation.py", "Validation", ":material/fact_check:"),
         ("pages/7_Compare.py", "Compare", ":material/compare_arrows:")]
POLL_S = 3.0  # seconds between job-panel polls (each costs a short script run)
# Where a finished job's result is seen: command -> (page, link text).
RESULT_PAGES = {"analyze": ("pages/1_Heatmaps.py", "See the heatmap"),
                "train": ("pages/5_Train_export.py", "See the training"),
                "eval": ("pages/5_Train_export.py", "See the evaluation"),
                "search-rank": ("pages/4_Rank_search.py", "See the search"),
                "compare": ("pages/7_Compare.py", "See the comparison"),
                "probe": ("pages/6_Validation.py", "See the validation")}
# Fast analysis settings for the one-click button: minutes on 2 CPU cores (the CLI's own
# defaults are sized for a better estimate).
QUICK = {"max_samples": "32", "val_samples": "8", "max_length": "64", "score_samples": "8"}
QUICK_TIME = ("About 2 minutes on 2 free CPU cores, the first time included (it converts the embedded "
              "model once); longer while other programs keep the cores busy.")
# And for evaluations on a CPU: one small benchmark instead of six.
QUICK_EVAL = {"tasks": "arc-easy", "limit": "50"}
DEFAULT_MODEL, DEFAULT_DATA = "smollm2-135m", "general"


def page(title: str, caption: str) -> None:
    """The frame of every page: config, navigation, the queue's heartbeat, the title."""
    st.set_page_config(page_title=f"FLoE · {title}", layout="wide")
    with st.sidebar:
        for path, label, icon in PAGES:
            st.page_link(path, label=label, icon=icon)
        active = jobs.active_jobs()
        if active:
            st.caption(f"{len(active)} job(s) active: see Runs")
    jobs.tick()  # settles dead jobs and starts queued ones even when no job panel is shown
    st.title(title)
    st.caption(caption)


def cpu_only(preset: dict) -> dict:
    """A preset that only applies without a GPU (with one, the CLI's defaults are quick)."""
    return {} if jobs.gpu_count() else preset


def quick_args(model: str = DEFAULT_MODEL, data: str = DEFAULT_DATA, extra: list[str] | None = None) -> list[str]:
    args = ["analyze", "--model", model, "--data", data]
    for dest, value in QUICK.items():
        args += [f"--{dest.replace('_', '-')}", value]
    return args + (extra or [])


def start_job(args: list[str], label: str) -> None:
    """Queue ``floe <args>`` and say so (it starts now if its device is free)."""
    job = jobs.submit_floe(args, label)
    st.toast(f"{'Started' if job['status'] == jobs.RUNNING else 'Queued'}: {md(label)}")


def quick_analyse_button(key: str, extra: list[str] | None = None, label: str | None = None) -> None:
    """One click: the embedded SmolLM2 on the general set with the quick settings."""
    args = quick_args(extra=extra)
    if st.button(label or "Analyse SmolLM2-135M on the general set (quick)", type="primary", key=key,
                 icon=":material/play_arrow:"):
        start_job(args, "analyse smollm2-135m · general (quick)" + (" · stability" if extra else ""))
        st.rerun()
    hint = "" if extra else f" {QUICK_TIME}"
    st.caption(f"Runs `{jobs.display_command(args)}` in the background.{hint}")
    plan_caption(args)


def layer_count_slider(container, label: str, n_layers: int, default: int, disabled: bool = False,
                       help: str | None = None) -> int:
    """k in 1..n_layers; a one-layer model has nothing to choose (a slider needs min < max)."""
    if n_layers < 2:
        container.caption(f"{label}: 1 (the model has one layer)")
        return 1
    return container.slider(label, 1, n_layers, min(default, n_layers), disabled=disabled, help=help)


def empty(message: str) -> None:
    """An empty state: what is missing and where to go next."""
    st.info(message, icon=":material/info:")
    st.page_link("app.py", label="Go to Runs to start an analysis", icon=":material/arrow_forward:")


def pick_run(runs: list[Run], label: str, key: str, help: str | None = None) -> Run | None:
    """A run picker whose choice is shared by every page (kept in the session)."""
    if not runs:
        return None
    by_id = {r.id: r for r in runs}
    shared = f"picked:{key}"
    ids = list(by_id)
    index = ids.index(st.session_state[shared]) if st.session_state.get(shared) in by_id else 0
    choice = st.selectbox(label, ids, index=index, format_func=lambda i: common.run_label(by_id[i]),
                          key=f"{key}:widget", help=help)
    assert choice is not None, "a selectbox with an index always has a choice"
    st.session_state[shared] = choice
    return by_id[choice]


def md(text) -> str:
    """User-derived text (paths, labels, messages) made inert for st.markdown: shown as
    typed, never as links, images or emphasis."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!<>|~$])", r"\\\1", str(text))


def show_error(error: Exception | str) -> None:
    """A problem as one message (no traceback): what is wrong and what to do."""
    hint = " Delete it on the Runs page and analyse again." if isinstance(error, CorruptRunError) else ""
    st.error(md(error) + hint, icon=":material/error:")


# --------------------------------------------------------------------------- job panel
def job_panel(commands: tuple[str, ...] | None = None, recent: int = 3) -> None:
    """Live cards for active jobs (and the last few finished), polled while any is active."""
    active = bool(jobs.active_jobs())
    st.fragment(run_every=POLL_S if active else None)(_job_cards)(commands, recent)


def _job_cards(commands: tuple[str, ...] | None, recent: int) -> None:
    jobs.tick()
    listed = [j for j in jobs.list_jobs() if commands is None or (j.get("args") or [""])[0] in commands]
    active = [j for j in listed if j["status"] in jobs.ACTIVE]
    shown = active + [j for j in listed if j["status"] not in jobs.ACTIVE][:recent]
    # A job that just ended changes what the rest of the page shows: rerun all of it.
    seen = f"active_jobs:{commands}"
    was, now = st.session_state.get(seen, set()), {j["id"] for j in active}
    st.session_state[seen] = now
    if was - now:
        st.rerun(scope="app")
    for job in shown:
        _job_card(job_view(job))


def _job_card(view: dict) -> None:
    icon = {"running": ":material/autorenew:", "queued": ":material/schedule:",
            "done": ":material/check_circle:", "failed": ":material/error:",
            "cancelled": ":material/cancel:"}.get(view["status"], "")
    with st.container(border=True):
        head, buttons = st.columns([4, 1.2])
        with head:
            st.markdown(f"{icon} **{view['status']}** · {md(view['label'])}", help=view["command"])
            if view["status"] in jobs.ACTIVE:
                fraction = view["fraction"]
                eta = f" · about {view['eta']} left" if view["eta"] else ""
                st.progress(fraction if fraction is not None else 0.0, text=f"{view['text']}{eta}")
            if view["lines"]:
                st.code("\n".join(view["lines"]), language=None)
            if view["status"] == jobs.FAILED:
                show_error(view["error"] or "the job failed")
            if view["status"] == jobs.DONE and view["run"]:
                target = RESULT_PAGES.get(view["command_name"])
                if target:
                    st.page_link(target[0], label=f"{target[1]} (run {view['run']})",
                                 icon=":material/arrow_forward:")
        with buttons:
            _job_buttons(view)


def _job_buttons(view: dict) -> None:
    job_id, status = view["id"], view["status"]
    if status in jobs.ACTIVE:
        if st.button("Cancel", key=f"cancel:{job_id}", icon=":material/stop:"):
            with st.spinner("stopping (the run stays resumable)"):
                jobs.cancel(job_id)
            st.rerun(scope="app")
        return
    if status in (jobs.CANCELLED, jobs.FAILED) and st.button(
            "Resume", key=f"resume:{job_id}", icon=":material/replay:",
            help="run the same command again: finished stages are reused, training resumes "
                 "from its last checkpoint"):
        jobs.resume(job_id)
        st.rerun(scope="app")
    if st.button("Dismiss", key=f"dismiss:{job_id}", icon=":material/close:",
                 help="forget this job (its runs stay)"):
        jobs.delete(job_id)
        st.rerun(scope="app")


def option_widgets(command: str, preset: dict, skip: tuple[str, ...] = ()) -> dict:
    """One widget per option of ``floe <command>``, grouped as in its ``--help``; ``preset``
    overrides the CLI's defaults shown (values equal to the CLI default are not passed); a
    key that is no option of the command is a ValueError."""
    forms.check_preset(command, preset)
    values = {}
    for group, items in groupby(forms.form_options(command, skip), key=lambda o: o.group):
        st.markdown(f"**{forms.group_title(group)}**")
        cols = st.columns(4)
        for i, opt in enumerate(items):
            # The preset is part of the key: switching it shows its values afresh.
            key = f"{command}:{hash(tuple(sorted(preset.items())))}:{opt.dest}"
            with cols[i % 4]:
                if forms.is_switch(opt):
                    default = bool(preset.get(opt.dest, opt.default))
                    values[opt.dest] = st.checkbox(opt.flag, value=default, help=opt.help, key=key)
                elif opt.kind == "choice":
                    default = preset.get(opt.dest, opt.text_default)
                    values[opt.dest] = st.selectbox(opt.flag, list(opt.choices), help=opt.help, key=key,
                                                    index=list(opt.choices).index(default))
                else:
                    values[opt.dest] = st.text_input(opt.flag, value=preset.get(opt.dest, opt.text_default),
                                                     help=opt.help, key=key)
    return values


def launcher(fixed: list[str], command: str, values: dict, label: str, button: str,
             ready: bool = True, key: str | None = None, keep: tuple[str, ...] = ()) -> None:
    """The equivalent CLI command of the choices made, and the button that runs it as a job
    (``keep``: options passed even at the parser's default, see forms.cli_args)."""
    try:
        args = fixed + forms.cli_args(forms.form_options(command), values, keep)
    except ValueError as e:
        show_error(e)
        args = None
    if args:
        st.caption("Equivalent command:")
        st.code(jobs.display_command(args), language="bash", wrap_lines=True)
        plan_caption(args)
    if st.button(button, disabled=not (args and ready), icon=":material/play_arrow:",
                 key=key or f"start:{command}"):
        assert args is not None, "the button is disabled without a command"
        start_job(args, label)
        st.rerun()


def plan_caption(args: list[str]) -> None:
    """The memory plan of ``floe <args>`` under its launch button's command."""
    plan = launch_plan(args)
    if plan is None:
        return
    for line in plan["lines"]:
        st.caption(md(line), help="estimated peak of each stage (`floe plan`); the job checks it before "
                   "loading the model and stops with the option to change")
    if plan["problem"]:
        st.warning(md(plan["problem"]), icon=":material/memory:")


def delete_runs(runs: list[Run]) -> None:
    for run in runs:
        try:
            run.delete()
        except RunLockedError as e:
            show_error(e)
    common.layers.cache_clear()


# --------------------------------------------------------------------------- recommendation
def recommendation_panel(score_run: Run, k: int, key: str) -> recommend.Recommendation:
    """Which layers to adapt at k, where that comes from and how sure it is
    (floe.app.recommend), with one button that trains it and, while nothing has measured
    this model and data, one that starts the cheap probe. The same panel on every page."""
    rec = recommend.recommend(score_run, k, jobs.list_jobs())
    lines = rec.lines
    icon = {"measured": ":material/verified:", "best agreement": ":material/balance:",
            "unchecked": ":material/help:"}[rec.source]
    with st.container(border=True, key=f"recommendation-{key}"):
        st.markdown(f"##### {icon} Recommendation: {lines['title']}")
        st.markdown(lines["source"])
        st.markdown(lines["floe"] + " " + lines["agreement"])
        if lines["compare"]:
            st.markdown(lines["compare"])
        st.caption(lines["costs"])
        left, right = st.columns(2)
        with left:
            if st.button("Train the recommendation", key=f"rec-train:{key}", icon=":material/play_arrow:",
                         type="primary", help=jobs.display_command(rec.train["args"])):
                start_job(rec.train["args"], rec.train["label"])
                st.rerun()
            if "fair" in lines:
                st.caption(lines["fair"])
        with right:
            if rec.probe is not None:
                if st.button("Start the cheap probe", key=f"rec-probe:{key}", icon=":material/science:",
                             disabled=rec.pending is not None, help=jobs.display_command(rec.probe["args"])):
                    start_job(rec.probe["args"], rec.probe["label"])
                    st.rerun()
                st.caption(lines["probe"])
        st.page_link("pages/6_Validation.py", label="How far to trust each ranking: Validation",
                     icon=":material/fact_check:")
    return rec
