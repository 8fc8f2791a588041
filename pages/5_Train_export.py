"""Train & export: choose k and a policy, see the cost, train sparsely, download the result."""
import functools

import streamlit as st

from floe.app import common, heatmaps, recommend, setsearch, training, validation
from floe.app import widgets as ui
from floe.pipeline.policies import MEASURED, POLICIES, available_policies
from floe.store import jobs

ui.page("Train & export", "Pick how many layers to adapt and by which ranking; train the sparse "
        "adapter in the background; download the layer list, the config and the adapter.")

runs, problems = common.usable_score_runs()
if not runs:
    ui.empty("No finished analysis yet: the layer choice comes from an analysis's ranking.")
    ui.quick_analyse_button("quick-train")
    ui.job_panel(("analyze",), recent=1)
    st.stop()

run = ui.pick_run(runs, "Score run", "score")
payload = common.layers(run)
n_layers = payload["n_layers"]
c1, c2 = st.columns([1, 2])
probes = recommend.finished_probes(run)
options = available_policies(payload) + setsearch.measured_options(probes)
# A finished probe of this model and data measured the layers: its ranking is the default.
policy = c1.radio("Policy", options, index=options.index("probe" if "probe" in options else "floe"),
                  format_func=POLICIES.get,
                  help="probe: a finished probe run's measured gains (the default when one exists); probe-set: "
                  "a joint probe's set search (with --set-search), the best set of each size; FLoE ranks layers "
                  "by its score; the others are baselines and common heuristics (docs/method.md, Policies)")
ranked_by = run  # the run whose ranking picks the layers: the probe run for a measured policy
if policy in MEASURED:
    offered = setsearch.probes_for(policy, probes)
    ranked_by = offered[c1.selectbox("Probe run", list(offered),
                                     format_func=lambda i: validation.probe_label(offered[i]))]
k = ui.layer_count_slider(c2, "k: number of layers to adapt", n_layers, 8, disabled=policy == "all")
# What each k buys, predicted by a joint probe's set search (opt-in: about L^2 validation passes).
curve_run = setsearch.curve_probe(probes, ranked_by if policy in MEASURED else None)
found = setsearch.set_search_of(curve_run) if curve_run is not None else None
if curve_run is None or found is None:
    c2.caption(setsearch.no_search_line(run, n_layers))
else:
    c2.plotly_chart(setsearch.curve_figure(found, k), key="k-curve")
    c2.caption(setsearch.curve_caption(found, curve_run, k, policy, run))
ui.recommendation_panel(run, k, "train")

chosen = training.chosen_layers(ranked_by, policy, k)
st.plotly_chart(heatmaps.heatmap_figure([run], marked=[chosen]), key="choice")
st.markdown(f"**Adapted layers ({len(chosen)}):** {', '.join(map(str, chosen))}")

trainable = training.trainable_parameters(run, chosen)
full = training.trainable_parameters(run, list(range(n_layers)))
memory = training.memory_estimate(run, chosen, trainable, cuda=jobs.gpu_count() > 0)
m1, m2, m3 = st.columns(3)
m1.metric("trainable parameters", f"{trainable:,}", f"{trainable / full:.0%} of all layers", delta_color="off")
m2.metric("expected training memory", f"≈ {memory['total']:.2f} GiB" if memory else "–",
          help=training.memory_estimate.__doc__ if memory else "the model folder is not on this machine")
m3.metric("lowest adapted layer", min(chosen), help="backward stops there: a higher choice trains faster")
if memory:
    preset = common.training_preset(run)
    st.caption(" · ".join(f"{name} {gib:.2f} GiB" for name, gib in memory.items() if name != "total") +
               f" (batch {preset['batch_size']} × {preset['max_length']} tokens, as in the analysis; "
               "the training run reports its measured peak)")

st.subheader("Sparse training")
preset = common.training_preset(run)
if policy in MEASURED:  # fair by default: another data seed than the probe's
    preset, fair = recommend.fair_training_values(run, ranked_by)
    st.caption(recommend.fair_note(fair))
with st.expander("All options of `floe train`"):
    values = ui.option_widgets("train", preset, skip=(*training.SELECTION_SKIP, "config"))
selection = ["--probe-run", ranked_by.id] if policy in MEASURED else ["--score-run", run.id]
ui.launcher(["train", *selection, "--policy", policy, "--k", str(k)], "train", values,
            f"train · {policy} top-{len(chosen)} · {common.run_label(run)}", "Start sparse training")
ui.job_panel(("train", "eval"), recent=1)

trained = training.train_runs_for(ranked_by, policy, k)
pending = training.pending_training(jobs.list_jobs(), ranked_by, policy, k)
if trained:
    train_run = ui.pick_run(trained, "Training run", "train")

    @st.fragment(run_every=ui.POLL_S if train_run.status == "running" else None)
    def live_loss():
        st.plotly_chart(training.loss_curve(train_run), key="loss")
    live_loss()
    for name, where in training.tracker_logs(train_run).items():  # --report-to
        st.caption(f"{name} logs of this run: `{where}`")
    if train_run.status == "done":
        st.dataframe(training.train_summary(train_run), hide_index=True)
        evals = training.eval_runs_for(train_run)
        if evals:
            st.dataframe(training.eval_table(evals), hide_index=True)
        with st.expander("Evaluate this adapter (`floe eval`)", expanded=not evals):
            eval_values = ui.option_widgets("eval", ui.cpu_only(ui.QUICK_EVAL),
                                             skip=training.TRAIN_RUN_EVAL_SKIP)
            ui.launcher(["eval", "--train-run", train_run.id], "eval", eval_values,
                        f"evaluate {train_run.id}", "Start evaluation")
elif pending:
    st.info(f"The training of this choice is {pending['status']}: its progress is in the job card above; "
            "its loss curve appears here once it trains.", icon=":material/hourglass_top:")
else:
    st.info("No training run for this choice yet: start one above. Its loss curve appears here live.")

st.subheader("Downloads")
st.download_button("Layer list (JSON)", training.selection_file(run, policy, k, ranked_by), file_name="layers.json",
                   mime="application/json", icon=":material/download:", key="dl:layers", on_click="ignore")
done = [r for r in trained if r.status == "done"]
if done:
    # Each file is built when its button is clicked (the export is written once, a zip made
    # per click), never on a page rerun; a download reruns nothing ("ignore"), so the other
    # buttons stay where they are for the next click.
    cols = st.columns(len(training.export_names(done[0])))
    for col, name in zip(cols, training.export_names(done[0])):
        col.download_button(name, functools.partial(training.export_file, done[0], name), file_name=name,
                            icon=":material/download:", key=f"dl:{name}", on_click="ignore")
    st.caption(f"From `floe export --train-run {done[0].id}`, built when you click: config.yaml trains it again "
               "(`floe train --config config.yaml`), the peft config adapts the same layers with plain LoRA.")
else:
    st.caption("The YAML config, the peft config and the adapter come with a finished training run.")
