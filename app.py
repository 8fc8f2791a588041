"""Runs (home): the runs in cache/, the background jobs, and new analyses."""
import streamlit as st

from floe.app import common, pickers, shared
from floe.app import widgets as ui
from floe.app.runs import (
    add_archive,
    archive_bytes,
    archive_name,
    clean_up,
    cleanup_preview,
    kinds_of,
    runs_table,
    sort_runs,
    status_of,
)
from floe.pipeline.data import DataError
from floe.store import jobs
from floe.store.archive import ArchiveError
from floe.store.runs import list_runs

ui.page("Runs", "Every analysis, training and rank search is a run in cache/runs. Long work "
        "runs in the background as `floe` commands: close the tab, come back later.")

st.subheader("Analyse in one click")
ui.quick_analyse_button("quick")

ui.job_panel()

# --------------------------------------------------------------------------- the answer
score_runs, _ = common.usable_score_runs()
if score_runs:
    st.subheader("Which layers to adapt")
    left, right = st.columns([2, 1])
    with left:
        scored = ui.pick_run(score_runs, "Score run", "score")
    n_layers = common.layers(scored)["n_layers"]
    k = ui.layer_count_slider(right, "k: layers to adapt", n_layers, 8)
    ui.recommendation_panel(scored, k, "runs")

# --------------------------------------------------------------------------- the runs
st.subheader("Runs")
runs = list_runs()
if not runs and jobs.active_jobs():
    st.info("No runs yet: the job above is loading its model and data (the first time, the "
            "embedded model is converted once, under a minute).", icon=":material/hourglass_top:")
elif not runs:
    st.info("No runs yet. Click **Analyse SmolLM2-135M** above: a few minutes later the Heatmaps "
            "page shows which of its 30 layers to adapt.", icon=":material/info:")
else:
    kinds = kinds_of(runs)
    counts = {kind: sum(r.kind == kind for r in runs) for kind in kinds}
    shown = st.multiselect("Kinds shown (score runs first)", kinds, default=kinds, key="runs:kinds",
                           format_func=lambda kind: f"{kind} ({counts[kind]})")
    listed = sort_runs(runs, shown)
    st.dataframe(runs_table(listed), hide_index=True, width="stretch",
                 column_config={"ratio": st.column_config.NumberColumn(format="percent"),
                                "error": st.column_config.TextColumn(width="medium")})
    by_id = {r.id: r for r in listed}
    picked = [by_id[i] for i in st.multiselect(
        "Select runs to resume or delete", list(by_id), format_func=lambda i: f"{i} · {status_of(by_id[i])}")]
    resume_col, delete_col, confirm_col, gc_col = st.columns([1, 1, 3, 2])
    stopped = [r for r in picked if status_of(r) in ("stale", "cancelled", "failed")]
    if resume_col.button("Resume", disabled=not stopped, icon=":material/replay:",
                         help="queue the job that made a stopped run again; it continues from "
                              "its last checkpoint"):
        found = {run.id: jobs.job_for_run(run.id) for run in stopped}
        stopped_jobs = {j["id"] for j in found.values() if j and j["status"] in (jobs.CANCELLED, jobs.FAILED)}
        for job_id in stopped_jobs:  # one job may have made several of the runs
            jobs.resume(job_id)
        outside = [run_id for run_id, job in found.items() if job is None]
        if outside:
            st.warning(f"{', '.join(outside)}: started outside the app; run the same `floe` command "
                       "again to resume.")
        else:
            st.rerun()
    sure = confirm_col.checkbox("yes, delete the selected runs and their files", disabled=not picked)
    if delete_col.button("Delete", disabled=not (picked and sure), icon=":material/delete:"):
        ui.delete_runs(picked)
        st.rerun()
    if gc_col.button("Clean up", icon=":material/cleaning_services:",
                     help="list every failed, stale or corrupt run (floe runs gc), then delete them"):
        st.session_state["cleanup"] = True
    if st.session_state.get("cleanup"):
        preview = cleanup_preview()
        with st.container(border=True):
            if preview.empty:
                st.success("Nothing to clean up: no failed, stale or corrupt run.", icon=":material/check:")
            else:
                st.markdown(f"**Clean up would delete these {len(preview)} run(s) and their files:**")
                st.dataframe(preview, hide_index=True)
            yes, no = st.columns([1, 4])
            if not preview.empty and yes.button(f"Delete these {len(preview)}", type="primary",
                                                icon=":material/delete:", key="cleanup:confirm"):
                cleaned = clean_up(list(preview["run"]))
                common.layers.cache_clear()
                st.session_state["cleanup"] = False
                st.toast(f"Deleted {len(cleaned)} run(s): {', '.join(cleaned) or 'none'}")
                st.rerun()
            if no.button("Close" if preview.empty else "Cancel", key="cleanup:cancel"):
                st.session_state["cleanup"] = False
                st.rerun()

    finished = [r.id for r in picked if status_of(r) == "done"]
    pack_col, unpack_col = st.columns([1, 2])
    if pack_col.button("Pack for another machine", disabled=not finished, icon=":material/archive:",
                       help="the selected finished runs and the runs they were computed from, in one "
                            ".tar.gz (floe runs pack --with-inputs); resume checkpoints stay behind"):
        try:
            st.session_state["runs:archive"] = (archive_name(finished), archive_bytes(finished))
        except ArchiveError as e:
            ui.show_error(e)
    if st.session_state.get("runs:archive"):
        name, data = st.session_state["runs:archive"]
        pack_col.download_button(f"Download {name} ({len(data) / 2 ** 20:.1f} MB)", data, file_name=name,
                                 mime="application/gzip", icon=":material/download:")
    upload = unpack_col.file_uploader("Add runs from an archive (floe runs pack)", type=["gz"],
                                      key="runs:upload", help="checked before anything is written: "
                                      "data files only, ids against their configs, checksums")
    if upload is not None and st.session_state.get("runs:unpacked") != upload.file_id:
        try:
            done = add_archive(upload.getvalue())
            st.session_state["runs:unpacked"] = upload.file_id
            common.layers.cache_clear()
            st.toast(f"Added {len(done['added']) + len(done['replaced'])} run(s); "
                     f"{len(done['kept'])} already here")
            st.rerun()
        except ArchiveError as e:
            ui.show_error(e)

    # ----------------------------------------------------------------------- shared runs
    shared_runs = shared.shared_runs(listed)
    if shared_runs:
        st.subheader("Shared across workers")
        run_id = st.selectbox("Shared probe or compare", list(shared_runs), key="shared:run")
        record = shared_runs[run_id]
        default = shared.default_url(record["storage"])
        st.caption(f"Study **{ui.md(record['study'])}** in {ui.md(record['storage'])} (as the run records it: "
                   "the password is not kept).")
        with st.form("shared:form", border=False):
            typed = st.text_input(
                "Storage URL", type="password", key="shared:url",
                placeholder=shared.placeholder(default),
                help=f"used for this read only, never saved; empty: ${shared.STORAGE_ENV} or the recorded URL "
                     "when it has no password")
            if st.form_submit_button("Read progress", icon=":material/sync:"):
                url = typed.strip() or default
                st.session_state["shared:view"] = (run_id, shared.read_progress(url, record["study"]) if url
                                                   else "type the storage's URL (with its password)")
        seen, rows = st.session_state.get("shared:view") or (None, None)
        if seen == run_id and isinstance(rows, str):
            ui.show_error(rows)
        elif seen == run_id and rows:
            done, running, waiting = st.columns(3)
            count = shared.counts(rows)
            done.metric("Cells done", f"{count['done']} / {len(rows)}")
            running.metric("Running", count["running"])
            waiting.metric("Waiting", count["waiting"], help="queued again, or not drawn yet")
            st.dataframe(shared.progress_table(rows), hide_index=True, width="stretch")
            st.plotly_chart(shared.worker_figure(rows), key="shared:workers")

# --------------------------------------------------------------------------- new analysis
st.subheader("New analysis")


def model_picker() -> str | None:
    sources = ["embedded", "local folder"] + (["hub id"] if pickers.hub_available() else [])
    source = st.radio("Model", sources, horizontal=True,
                      help=None if pickers.hub_available() else "hub ids need a network (HF_HUB_OFFLINE is set)")
    if source == "embedded":
        models = pickers.embedded_models()
        return st.selectbox("Embedded model", list(models), format_func=lambda n: f"{n}: {models[n]}")
    text = st.text_input("Model folder" if source == "local folder" else "Hub id",
                         placeholder="/path/to/model (a folder with config.json)" if source == "local folder"
                         else "HuggingFaceTB/SmolLM2-360M-Instruct")
    if not text:
        return None
    try:
        if source == "local folder":
            st.caption(f"model: {ui.md(pickers.check_model_folder(text))}")
            return text
        return pickers.check_hub_id(text)
    except ValueError as e:
        ui.show_error(e)
        return None


def data_picker() -> str | None:
    source = st.radio("Data", ["embedded set", "upload a file", "local file"], horizontal=True)
    if source == "embedded set":
        sets = pickers.embedded_sets()
        name = st.selectbox("Embedded set", list(sets))
        st.caption(sets[name])
        return name
    if source == "upload a file":
        upload = st.file_uploader(f"Instruction data (at most {pickers.MAX_UPLOAD_MB} MB)",
                                  type=["json", "jsonl", "csv", "parquet"], max_upload_size=pickers.MAX_UPLOAD_MB)
        if upload is None:
            st.caption("Alpaca/Dolly fields (instruction, input or context, output or response) "
                       "or chat `messages` ending with the assistant's turn.")
            return None
        try:
            path = str(pickers.save_upload(upload.name, upload.getvalue()))
        except ValueError as e:
            ui.show_error(e)
            return None
    else:
        path = st.text_input("Data file", placeholder="/path/to/data.jsonl")
        if not path:
            return None
    try:
        n, preview = pickers.check_data_file(path)
    except (DataError, ValueError) as e:
        ui.show_error(e)
        return None
    st.caption(f"{n} usable examples; the first few:")
    st.dataframe(preview, hide_index=True)
    return path


left, right = st.columns(2)
with left:
    model = model_picker()
with right:
    data = data_picker()
stability = st.checkbox("Also the stability study: one analysis per data ratio (100 / 70 / 30 %)",
                        help="floe analyze --ratios 1.0,0.7,0.3; the Stability page compares the rankings")
quick = st.toggle("Quick settings (a few minutes on 2 CPU cores)", value=jobs.gpu_count() == 0,
                  help=", ".join(f"{k} {v}" for k, v in ui.QUICK.items()))
with st.expander("All options of `floe analyze`"):
    values = ui.option_widgets("analyze", ui.QUICK if quick else {}, skip=("ratios",))
if stability:
    values["ratios"] = "1.0,0.7,0.3"
if data and data not in pickers.embedded_sets():
    try:
        need = int(values["max_samples"]) + int(values["val_samples"])
        if pickers.check_data_file(data)[0] < need:
            st.warning(f"The file has fewer examples than the {need} this analysis draws "
                       "(--max-samples + --val-samples): lower them under All options.")
    except ValueError:
        pass  # an invalid number is reported with the command below
ui.launcher(["analyze", "--model", model or "MODEL?", "--data", data or "DATA?"], "analyze", values,
            f"analyse {common.short_name(model)} · {common.short_name(data)}", "Start analysis",
            ready=bool(model and data))
