"""Compare: every policy's held-out result against FLoE's, paired by seed; start a fair compare."""
import streamlit as st

from floe.app import common, compare, recommend, setsearch, validation
from floe.app import widgets as ui
from floe.pipeline.policies import available_policies

ui.page("Compare", "Which layer choice trains the better adapter? `floe compare` trains each policy's "
        "top-k under one budget over several seeds and evaluates it on held-out data; each policy "
        "minus FLoE is paired by seed.")

runs, _ = common.usable_score_runs()
if not runs:
    ui.empty("No finished analysis yet: a compare trains the top-k layers of a score run's rankings.")
    ui.quick_analyse_button("quick-compare")
    st.stop()

run = ui.pick_run(runs, "Score run", "score")
found = compare.compare_runs(run)
if not found:
    st.info("No compare of this score run yet: start one below.", icon=":material/info:")
else:
    by_id = {r.id: r for r in found}
    chosen = by_id[st.selectbox("Compare run", list(by_id), format_func=lambda i: compare.compare_label(by_id[i]))]
    payload = compare.compare_payload(chosen)
    metric = st.selectbox("Metric", payload["metrics"], index=payload["metrics"].index("val_loss")
                          if "val_loss" in payload["metrics"] else 0)
    better = "lower is better" if compare.lower_is_better(metric) else "higher is better"
    summary = compare.compare_summary(payload, metric)
    if summary:
        st.markdown(summary)
    if payload["partial"]:
        st.caption("Partial: the compare is still running; the table fills as cells finish.")
    st.dataframe(compare.compare_table(payload, metric), hide_index=True, width="stretch")
    st.caption(f"{metric}: {better}. Mean over the training seeds with its 95 % t-interval; \"minus floe\": "
               "the policy's value minus FLoE's at the same k and seed, with its 95 % t-interval: an interval "
               "that includes 0 is no difference the seeds support.")
    if note := compare.fairness(payload):
        (st.success if note.startswith("Fair") else st.warning)(note)

with st.expander("Start a compare", expanded=not found):
    probes = {p.id: p for p in recommend.finished_probes(run)}
    n_layers = common.layers(run)["n_layers"]
    fixed = ["compare", "--score-run", run.id]
    probe_run, seed = None, None
    if probes:
        probe_run = probes[st.selectbox("Probe run (policies probe, probe-set)", list(probes),
                                        format_func=lambda i: validation.probe_label(probes[i]))]
        values, fair = recommend.fair_training_values(run, probe_run)
        seed = values["seed"]
        fixed += ["--probe-run", probe_run.id]
        st.caption(recommend.fair_note(fair, "compare"))
    else:
        st.caption("No finished probe of this model and data: the compare has no measured column "
                   "(the Validation page or the recommendation starts a probe).")
    # probe-set joins probe when the probe run has a set search (floe probe --set-search).
    policies = compare.fair_policies(available_policies(common.layers(run)),
                                     setsearch.offered_by(probe_run) if probe_run else [])
    preset = {**common.training_preset(run), **ui.cpu_only(ui.QUICK_EVAL), "ks": str(min(8, n_layers)),
              "policies": ",".join(policies), **({"seed": seed} if seed is not None else {})}
    values = ui.option_widgets("compare", preset, skip=("score_run", "probe_run"))
    ui.launcher(fixed, "compare", values, f"compare · {common.run_label(run)}", "Start the compare",
                key="start:fair-compare")
ui.job_panel(("compare",), recent=1)
