"""Stability: each layer's rank across data ratios, with and without refinement (Fig. 7)."""
import streamlit as st

from floe.app import stability
from floe.app import widgets as ui

ui.page("Stability", "Does the ranking hold with less data? Each layer's rank at 100 / 70 / 30 % "
        "of the sample, with the min-max band across ratios. Narrow bands: trust the ranking there.")

sources = stability.stability_sources()
if not sources:
    ui.empty("No stability study yet: it needs one analysis per data ratio of the same model "
             "and data. Start one here (three quick analyses), or tick the stability study on "
             "the Runs page.")
    ui.quick_analyse_button("quick-stability", extra=["--ratios", "1.0,0.7,0.3"],
                            label="Run the 100 / 70 / 30 % study on SmolLM2-135M (quick)")
    ui.job_panel(("analyze",), recent=1)
    st.stop()

label = st.selectbox("Study", list(sources))
payload = sources[label]
st.plotly_chart(stability.stability_figure(payload), key="stability")
st.caption("Lower rank = more important. The paper (Appendix D) finds the first layers and a "
           "middle block stable and the deep layers variable: where the band is wide, choose "
           "more layers than the top-k or enlarge the sample.")
st.dataframe(stability.stability_summary(payload), hide_index=True)
with st.expander("Ranks per layer"):
    st.dataframe(stability.stability_table(payload))
