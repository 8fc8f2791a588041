"""Rank search: Optuna's history, loss against r, the best r; start or resume a search."""
import streamlit as st

from floe.app import common, ranksearch, training
from floe.app import widgets as ui
from floe.pipeline.policies import POLICIES, available_policies

ui.page("Rank search", "Which adapter rank r for the chosen layers? Each trial trains the sparse "
        "adapter at one r and scores its validation loss; TPE proposes the next r.")

searches = ranksearch.rank_searches()
if searches:
    search = ui.pick_run(searches, "Search", "ranksearch")
    trials, summary = ranksearch.search_trials(search)
    if trials is None:
        st.info(f"This search ({search.status}) has no trial yet: trials appear here as they "
                "finish (the job's progress is below).")
    else:
        c1, c2, c3 = st.columns(3)
        best = summary["best_value"]
        c1.metric("best r", summary["best_r"] if summary["best_r"] is not None else "–")
        c2.metric("best validation loss", f"{best:.4f}" if best is not None else "–")
        c3.metric("trials finished", f"{summary['n_finished']} of {summary.get('n_trials', '?')}")
        history, slice_ = ranksearch.search_figures(trials, summary["best_r"])
        left, right = st.columns(2)
        left.plotly_chart(history, key="history")
        right.plotly_chart(slice_, key="slice")
        st.caption("Left: each trial's loss and the best so far; pruned trials (stopped early by "
                   "the median pruner) are crosses. Right: loss against r; the dashed line is the best r.")
        st.dataframe(trials, hide_index=True)
else:
    st.info("No rank search yet. Pick the layers below and start one.", icon=":material/info:")

st.subheader("Start or resume a search")
runs, _ = common.usable_score_runs()
if not runs:
    ui.empty("A rank search runs on the layers an analysis chose: analyse a model first.")
    st.stop()
run = ui.pick_run(runs, "Score run whose layers are searched", "score")
n_layers = common.layers(run)["n_layers"]
c1, c2 = st.columns(2)
policy = c1.selectbox("Policy", available_policies(common.layers(run)), format_func=POLICIES.get)
k = ui.layer_count_slider(c2, "k: layers to adapt", n_layers, 8, disabled=policy == "all")
st.caption(f"layers {training.chosen_layers(run, policy, k)}. Running the same search again resumes it: "
           "finished trials are kept and their training runs reused; more trials extend it.")
with st.expander("All options of `floe search-rank`"):
    values = ui.option_widgets("search-rank", {**common.training_preset(run), **ui.cpu_only({"n_trials": "5"})},
                               skip=training.SELECTION_SKIP)
ui.launcher(["search-rank", "--score-run", run.id, "--policy", policy, "--k", str(k)], "search-rank",
            values, f"rank search · {policy} top-{k} · {common.run_label(run)}", "Start / resume the search")
ui.job_panel(("search-rank",), recent=1)
