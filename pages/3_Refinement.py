"""Refinement: rankings with and without the swap refinement (Fig. 6); which k an evaluation needs."""
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

st.subheader("Evaluate the k that differ")
compared = refinement.compare_runs(run)
if compared:
    st.page_link("pages/7_Compare.py", label="See the evaluation per k (FLoE with and without refinement) on "
                 "the Compare page", icon=":material/arrow_forward:")
else:
    st.info("No evaluation yet. `floe compare` trains each k with both rankings and evaluates it; its "
            "results appear on the Compare page.", icon=":material/info:")
with st.expander("Start `floe compare` on the k that differ", expanded=bool(ks) and not compared):
    preset = {**common.training_preset(run), **ui.cpu_only(ui.QUICK_EVAL),
              "ks": ",".join(map(str, ks[:3] or [min(8, payload["n_layers"])])),
              "policies": "floe,floe-no-refine", "seeds": "42", "include_all": False}
    values = ui.option_widgets("compare", preset, skip=("score_run",))
    ui.launcher(["compare", "--score-run", run.id], "compare", values,
                f"compare refinement · {common.run_label(run)}", "Start the comparison")
ui.job_panel(("compare",), recent=1)
