"""Refinement: rankings with and without the swap refinement (Fig. 6), results per k (Table 7)."""
import streamlit as st

from floe.app import common, refinement
from floe.app import widgets as ui

ui.page("Refinement", "What the refinement stage changes: each layer's rank without and with it. "
        "Only the k whose top-k layer sets differ need an evaluation to tell the two apart.")

runs, problems = common.usable_score_runs()
if not runs:
    ui.empty("No finished analysis yet: the comparison needs one score run.")
    ui.quick_analyse_button("quick-refine")
    st.stop()

run = ui.pick_run(runs, "Score run", "score")
payload = common.layers(run)
moves = refinement.refinement_moves(payload)
ks = refinement.differing_ks(payload["ranking"], payload["ranking_without_refinement"])
c1, c2, c3 = st.columns(3)
c1.metric("layers that move", int((moves["moved up by"] != 0).sum()))
c2.metric("first rank that differs", ks[0] if ks else "none")
c3.metric("k to evaluate", len(ks))
done = refinement.refinement_summary(payload)
if done:
    st.markdown(done)
st.plotly_chart(refinement.refinement_figure(payload), key="bump")
if ks:
    st.markdown(f"Top-k sets differ for **k = {', '.join(map(str, ks))}**; for every other k both "
                "rankings adapt the same layers.")
else:
    st.success("Refinement does not change any top-k set of this run: both rankings pick the same layers.")
st.dataframe(moves, hide_index=True)

st.subheader("Evaluation per k (the paper's Table 7)")
compared = refinement.compare_runs(run)
if compared:
    metric = st.selectbox("Metric", refinement.compare_table(compared[0])[1])
    table, _ = refinement.compare_table(compared[0], metric)
    st.dataframe(table)
    st.caption("Mean ± 95 % t-interval half-width over training seeds.")
    reference = refinement.compare_reference(compared[0])
    if reference:
        st.dataframe(refinement.compare_table(compared[0], metric, differences=True)[0])
        st.caption(f"Each policy minus {reference} at the same k and training seed (mean ± 95 % t half-width): "
                   "an interval that includes 0 is no difference the seeds support.")
else:
    st.info("No evaluation yet. `floe compare` trains each k with both rankings and evaluates it.")
with st.expander("Start `floe compare` on the k that differ", expanded=bool(ks) and not compared):
    preset = {**common.training_preset(run), **ui.cpu_only(ui.QUICK_EVAL),
              "ks": ",".join(map(str, ks[:3] or [min(8, payload["n_layers"])])),
              "policies": "floe,floe-no-refine", "seeds": "42", "include_all": False}
    values = ui.option_widgets("compare", preset, skip=("score_run",))
    ui.launcher(["compare", "--score-run", run.id], "compare", values,
                f"compare refinement · {common.run_label(run)}", "Start the comparison")
ui.job_panel(("compare",), recent=1)
