"""Validation: does a layer ranking predict what adapting each layer actually buys?"""
import streamlit as st

from floe.app import common, compare, estimates, recommend, setsearch, validation
from floe.app import widgets as ui
from floe.pipeline.policies import POLICIES

ui.page("Validation", "Ground truth for layer rankings: a probe adapts each layer alone under one "
        "budget and measures the validation-loss gain; every policy's ranking is checked against it.")

runs, _ = common.usable_score_runs()
if not runs:
    ui.empty("No finished analysis yet: validation checks the rankings of a score run.")
    ui.quick_analyse_button("quick-validation")
    st.stop()

run = ui.pick_run(runs, "Score run", "score")
payload = common.layers(run)
probes = validation.matching_probes(run)
if not probes:
    st.info("No probe of this model and data yet. Start one below: the cheap joint probe trains one adapter "
            "on every layer and measures each layer's gain with only its adapter on; this page fills when "
            "it finishes.", icon=":material/info:")
else:
    by_id = {p.id: p for p in probes}
    probe_run = by_id[st.selectbox("Probe", list(by_id), format_func=lambda i: validation.probe_label(by_id[i]))]
    probe = validation.probe_payload(probe_run)
    st.plotly_chart(validation.gain_figure(payload, probe, common.run_label(run)), key="gains")
    st.caption("Bars: each probed layer's mean validation-loss gain over the probe's seeds, with its "
               "95 % t-interval (two or more seeds); above, the FLoE scores of the same layers.")
    table = validation.agreement(run, probe_run)
    st.caption(f"FLoE's warm-up budget for this score run: {common.budget_line(run)}.")
    if warning := common.budget_warning(run):
        st.warning(warning, icon=":material/warning:")
    if not table:
        st.info("The agreement needs measured gains on at least 2 layers.", icon=":material/info:")
    else:
        st.markdown(validation.summary_sentence(table))
        st.dataframe(validation.policy_table(table), hide_index=True)
        st.page_link("pages/7_Compare.py", label="Each policy's top-k trained and judged on held-out data: Compare",
                     icon=":material/compare_arrows:")
        st.caption("ρ: Spearman rank correlation of the policy's ranking with the measured gains, with a "
                   "bootstrap 95 % interval over layers. Partial ρ given depth: what the ranking says "
                   "beyond the layer index. P@k: share of the policy's top-k in the probe's top-k "
                   "(random expects k/n).")
        left, right = st.columns(2)
        policy = left.selectbox("Policy", list(table), format_func=POLICIES.get)
        left.plotly_chart(validation.scatter_figure(payload, probe, policy, table[policy]), key="scatter")
        right.plotly_chart(validation.precision_figure(table), key="precision")
    curve = validation.budget_curve(run, probe_run)
    if curve["steps"].nunique() > 1 if len(curve) else False:
        st.subheader("Does the verdict hold after a longer warm-up?")
        st.markdown(validation.budget_curve_sentence(curve))
        st.plotly_chart(validation.budget_curve_figure(curve), key="budget-curve")
        st.caption("Each point: a score run of this model and data with this run's scoring settings, after a "
                   "warm-up of that many optimizer steps; ρ of its ranking with this probe's gains, with the "
                   "bootstrap 95 % interval over layers. Below the dashed line a ranking points away from the "
                   "useful layers. `floe analyze --max-samples W` adds a warm-up length.")
    if checks := setsearch.calibrations(probe_run):
        st.subheader("Does the set search predict trained losses?")
        compare_run, found = checks[0]
        if len(checks) > 1:
            pick = st.selectbox("Compare run", range(len(checks)),
                                format_func=lambda i: compare.compare_label(checks[i][0]))
            compare_run, found = checks[pick]
        st.markdown(setsearch.calibration_sentence(found))
        st.plotly_chart(setsearch.calibration_figure(found), key="calibration")
        st.caption(f"Each point: a (policy, k) cell of compare run {compare_run.id}, its sparse adapter trained "
                   "on those layers alone (mean over seeds) against the probe's prediction for the same set "
                   "(the joint adapter with only the set's adapters on).")
    st.subheader("Select by measurement")
    k = ui.layer_count_slider(st, "k: layers to adapt", payload["n_layers"], 8)
    chosen = validation.measured_selection(run, probe_run, k)
    if chosen is None:
        st.info("The probe is not finished: its ranking becomes a policy once it is.", icon=":material/info:")
    else:
        c1, c2 = st.columns(2)
        c1.metric("selection cost", estimates.format_seconds(chosen["seconds"]), help=chosen["what"])
        c2.metric("× FLoE warm-up + scoring", f"{chosen['ratio']:.2f}" if chosen["ratio"] else "–",
                  help=f"FLoE on this score run: {estimates.format_seconds(chosen['floe_seconds'])}")
        if chosen["same_data"]:
            st.caption(f"Both on the same data budget: {chosen['floe_data']}.")
        else:
            st.caption(f"Not the same data: the probe measured on {chosen['probe_data']}, FLoE's warm-up "
                       f"on {chosen['floe_data']}; the ratio compares selections of different budgets. "
                       "On the same data the joint probe cost about 1x FLoE (bench/README.md).")
        st.markdown(f"**{chosen['label']}, top {k}:** {', '.join(map(str, chosen['layers']))}")
        values, fair = recommend.fair_training_values(run, probe_run)
        ui.launcher(["train", "--policy", "probe", "--probe-run", probe_run.id, "--k", str(k)], "train",
                    values, f"train · probe top-{k} · {common.run_label(run)}", "Train the measured top-k",
                    key="measured")
        st.caption(recommend.fair_note(fair))

with st.expander("Start a probe", expanded=not probes):
    st.caption("Schedule joint (the default here): one all-layer training, each layer's gain read with only "
               "its adapter on; about FLoE's warm-up + scoring on the same data, Spearman 0.97 with the full "
               "probe on SmolLM2. Halving: about 4x FLoE (Spearman 0.99, the same top 8). Cells: the full "
               "probe, one cached run per layer (about 7x). bench/README.md.")
    values = ui.option_widgets("probe", estimates.probe_values(run), skip=("score_run",))
    estimate = estimates.probe_estimate(run, values.get("schedule", "joint"), values)
    st.caption(f"Time: {estimate['text']}.")
    ui.launcher(["probe", "--score-run", run.id], "probe", values,
                f"probe · {common.run_label(run)}", "Start the probe", keep=estimates.PROBE_KEEP)
ui.job_panel(("probe",), recent=1)
