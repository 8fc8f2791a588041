"""Heatmaps: layer importance per run (the paper's Fig. 3), and one layer's masks."""
import streamlit as st

from floe.app import common, heatmaps
from floe.app import widgets as ui

ui.page("Heatmaps", "FLoE's layer importance of every finished analysis: one row per run, one column "
        "per layer. Dark = the adapted model no longer needs much of that layer's pretrained "
        "capacity, so FLoE ranks it high; dots mark each run's FLoE top-k. Whether that ranking "
        "predicts what adapting a layer buys: the recommendation below and the Validation page.")

runs, problems = common.usable_score_runs()
for message in problems.values():
    ui.show_error(message)
if not runs:
    ui.empty("No finished analysis yet. Start one here or on the Runs page; its heatmap "
             "appears when it finishes.")
    ui.quick_analyse_button("quick-heatmaps")
    ui.job_panel(("analyze",), recent=1)
    st.stop()

by_id = {r.id: r for r in runs}
picked = st.multiselect("Runs (rows)", list(by_id), default=list(by_id)[:8],
                        format_func=lambda i: common.run_label(by_id[i]))
if not picked:
    st.info("Pick at least one run above.")
    st.stop()
rows = [by_id[i] for i in picked]
depths = {common.layers(r)["n_layers"] for r in rows}
c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
value = c1.selectbox("Value", list(heatmaps.VALUES), help="FLoE score s_k = 1 − retained share of the "
                     "layer's pretrained capacity (mask values weighted by the weights they gate)")
align = c2.radio("Align layers by", ["index", "relative depth"], horizontal=True, disabled=len(depths) == 1,
                 help="relative depth lines up models of different depth (first layer at 0, last at 1)")
k = ui.layer_count_slider(c3, "Top-k layers marked", min(depths), 5)
normalise = c4.checkbox("Normalise rows", help="min-max per run: compares shapes, not levels")
st.plotly_chart(heatmaps.heatmap_figure(rows, value, "index" if align == "index" else "relative", k, normalise),
                key="heatmap")
st.caption("Hover a cell for its components: retained head and neuron shares after tuning, and "
           "the Fisher (how much the adapted model's loss depends on the units) and Taylor "
           "(what the units cost in the base model) sums. Rows that agree on the dots agree on "
           "which layers to adapt.")
st.caption("Warm-up budgets (FLoE's scores come from the warmed-up adapter): "
           + "; ".join(f"{common.run_label(r)}: {common.budget_line(r)}" for r in rows) + ".")
starved = [r for r in rows if common.budget_warning(r)]
if starved:
    st.warning(common.budget_warning(starved[0]) + (f" ({len(starved)} of the {len(rows)} rows.)"
               if len(rows) > 1 else ""), icon=":material/warning:")

st.subheader("Which layers to adapt")
run = ui.pick_run(rows, "Run", "score")
ui.recommendation_panel(run, k, "heatmaps")

st.subheader("Drill-down: one layer's head and neuron masks")
payload = common.layers(run)
layer = st.select_slider("Layer", list(range(payload["n_layers"])), value=payload["ranking"][0],
                         help="starts at the run's most important layer")
rank = payload["ranking"].index(layer) + 1
st.markdown(f"Layer **{layer}**: rank **{rank}** of {payload['n_layers']}, score "
            f"**{payload['layer_scores'][layer]:.3f}** (without refinement "
            f"{payload['layer_scores_without_refinement'][layer]:.3f}).")
heads, neurons, stats = heatmaps.mask_figures(run, layer)
st.plotly_chart(heads, key="heads")
st.plotly_chart(neurons, key="neurons")
st.dataframe(stats, hide_index=True)
st.caption("greedy: the binary masks of the budgeted search; refined: after the swaps within "
           "the layer; tuned: least-squares mask values (clipped to [0, 1] in the score). Masked "
           "units (0) are capacity the adapted model does not need.")
