"""The recommendation: which layers to adapt at k, where that answer comes from, and how
sure it is. Pure data, no Streamlit: ``floe.app.widgets.recommendation_panel`` draws it,
the same panel on the Runs, Heatmaps and Train & export pages.

Where the answer comes from, first that applies:

* ``measured``: a finished probe of this model and data ranks the layers by their
  measured validation-loss gains (policy ``probe``);
* ``best agreement``: no such probe, but a probe elsewhere (other data, or another model)
  found a ranking whose ρ with the measured gains is above 0: that ranking on this score run;
* ``unchecked``: FLoE's ranking, with the plain note that nothing has checked it.

Beside it: FLoE's top-k, the overlap, FLoE's agreement with the measured gains, the
held-out compare's paired difference when one exists, both selection costs, the command
that trains the recommendation (with a fair data seed when a probe chose the layers) and
the cheap probe that would settle it when none has.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from floe.app import common, forms
from floe.app.common import skip_corrupt
from floe.app.estimates import (  # the costs and the probe's form, importable from here as before
    PROBE_KEEP,
    SCHEDULE_COST,
    SIZES,
    format_seconds,
    probe_estimate,
    probe_values,
    same_budget,
)
from floe.pipeline.policies import MEASURED, POLICIES, available_policies
from floe.store.artifacts import JobRecord
from floe.store.runs import DONE, Run, list_runs

__all__ = ["ACTIVE_JOBS", "FAIR_TRIES", "PROBE_KEEP", "SCHEDULE_COST", "SIZES", "SOURCES", "Recommendation",
           "best_checked", "compare_difference", "difference_verdict", "fair_note", "fair_seed", "fair_training_values",
           "finished_probes", "format_seconds", "panel_lines", "pending_probe", "probe_estimate", "probe_values",
           "recommend", "same_budget"]

SOURCES = ("measured", "best agreement", "unchecked")
FAIR_TRIES = 8  # data seeds tried after the probe's for one whose validation sample it never saw
ACTIVE_JOBS = ("queued", "running")  # floe.store.jobs.ACTIVE, without importing the job store here
# Rankings that cannot be "the best checked": a random draw's ρ is luck; "all" ranks nothing.
_NOT_CANDIDATES = ("random", "all", *MEASURED)


@dataclass
class Recommendation:
    """What the panel shows; see the module's docstring."""

    source: str                     # one of SOURCES
    policy: str                     # the recommended ranking: "probe", or a score run's policy
    k: int
    layers: list[int]               # the recommended layers (sorted)
    score_run: Run
    ranked_by: Run                  # the probe run (measured) or the score run
    floe_layers: list[int]          # FLoE's top-k on the score run (sorted)
    probe_run: Run | None = None    # measured: the probe; best agreement: the probe elsewhere
    checked: dict | None = None     # best agreement: {"figures", "where", "verdict"} of that check
    floe_check: dict | None = None  # FLoE's agreement: {"rho", "ci", "verdict", "where", "budget"}
    compare: dict | None = None     # compare_difference() of the recommendation against FLoE
    costs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)    # {"args", "label", "fair"}
    probe: dict | None = None       # the cheap probe that settles it: {"args", "label", "estimate"}
    pending: str | None = None      # a probe of this model and data that is running or queued
    lines: dict = field(default_factory=dict)    # the panel's sentences (panel_lines)

    @property
    def overlap(self) -> int:
        return len(set(self.layers) & set(self.floe_layers))


# --------------------------------------------------------------------------- where from
def finished_probes(score_run: Run) -> list[Run]:
    """Finished probes of the score run's model and data, of its depth: those on the
    analysis's data budget first (their cost compares with FLoE's), newest first within."""
    from floe.app.validation import matching_probes, probe_payload
    n = common.layers(score_run)["n_layers"]
    out = []
    for run in matching_probes(score_run):
        with skip_corrupt():
            if run.status == DONE and probe_payload(run)["n_layers"] == n:
                out.append(run)
    return sorted(out, key=lambda run: not same_budget(score_run, run.config.get("data") or {}))


def _where(run: Run) -> str:
    """"model · data" of a run (a probe's config, or a score run's warm-up)."""
    d = common.describe(run)
    if run.kind == "probe":
        cfg = run.config
        d = {"model": common.short_name(cfg["model"]), "data": common.short_name(cfg["data"].get("data"))}
    return f"{d['model']} · {d['data']}"


def best_checked(score_run: Run) -> dict | None:
    """The ranking with the best measured agreement so far on other data (or another model):
    among every finished probe and the newest score run of its model and data, the policy
    whose ρ interval lies above 0 with the highest lower bound (the same model first), and
    which this score run also holds. {"policy", "figures", "probe_run", "checked_on"
    (score run), "where"}; None when no ranking predicted the gains anywhere."""
    from floe.app.validation import agreement
    from floe.experiments.validation import direction, matching_score_runs, same_setup
    here = common.layers(score_run)
    own = set(available_policies(here))
    model = score_run.config["warmup"]["model"]
    found = []
    for probe in (r for r in list_runs() if r.kind == "probe"):
        with skip_corrupt():
            if probe.status != DONE or same_setup(score_run, probe):
                continue
            candidates = matching_score_runs(probe)
            if not candidates:
                continue
            try:
                table = agreement(candidates[0], probe)
            except ValueError:  # another depth
                continue
            same_model = probe.config["model"] == model
            for policy, figures in table.items():
                if policy in own and policy not in _NOT_CANDIDATES and direction(figures) == "predicts":
                    found.append((same_model, figures["spearman_ci"][0], policy, figures, probe, candidates[0]))
    if not found:
        return None
    _, _, policy, figures, probe, scored = max(found, key=lambda f: (f[0], f[1]))
    return {"policy": policy, "figures": figures, "probe_run": probe, "checked_on": scored,
            "where": _where(probe)}


def pending_probe(score_run: Run, jobs: list[JobRecord]) -> str | None:
    """A probe of the score run's model and data that is not finished (a run with cells so
    far), or a probe job of this score run that is queued or running: its id, else None."""
    from floe.app.validation import matching_probes
    for run in matching_probes(score_run):
        with skip_corrupt():
            if run.status != DONE:
                return run.id
    for job in jobs:
        args = job.get("args") or []
        if job["status"] in ACTIVE_JOBS and args[:1] == ["probe"] and _flag(args, "--score-run") == score_run.id:
            return job["id"]
    return None


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args[:-1] else None


# --------------------------------------------------------------------------- held-out compare
def compare_difference(score_run: Run, policy: str, k: int, probe_run: Run | None = None,
                       metric: str = "val_loss") -> dict | None:
    """The newest finished compare of this score run with ``policy`` against FLoE (paired by
    seed): the difference at k (or at the nearest compared k), its interval, the seeds,
    and how many of the compare's validation examples the probe had seen. A compare of
    policy probe counts only when it used ``probe_run``. None when no compare has both."""
    from floe.app.refinement import compare_runs
    for run in compare_runs(score_run):
        with skip_corrupt():
            payload = common.run_json(run, "compare.json")
            diffs = payload.get("differences") or {}
            if diffs.get("reference") != "floe":
                continue
            selection = payload.get("selection") or {}
            if policy in MEASURED and (probe_run is None or selection.get("probe_run") != probe_run.id):
                continue
            cells = {c["k"]: c for c in diffs.get("cells", []) if c["policy"] == policy and c["metric"] == metric}
            if not cells:
                continue
            at = min(cells, key=lambda c: (abs(c - k), -c))
            cell = cells[at]
            return {"run": run.id, "k": at, "asked_k": k, "metric": metric, "mean": cell["mean"],
                    "ci_low": cell.get("ci_low"), "ci_high": cell.get("ci_high"), "n": cell.get("n"),
                    "val_seen": selection.get("val_seen_by_probe"), "n_val": selection.get("n_val"),
                    "verdict": difference_verdict(cell, lower_is_better=True)}
    return None


def difference_verdict(cell: Mapping[str, Any], lower_is_better: bool = True) -> str:
    """What a paired difference (policy minus FLoE) says: "better" or "worse" when its interval
    excludes 0, "no difference the seeds support" when it includes 0, "one seed, no
    interval" without one."""
    lo, hi = cell.get("ci_low"), cell.get("ci_high")
    if lo is None or hi is None:
        return "one seed, no interval"
    if lo <= 0 <= hi:
        return "no difference the seeds support"
    below = hi < 0
    return "better than FLoE" if below == lower_is_better else "worse than FLoE"


# --------------------------------------------------------------------------- a fair seed
def fair_seed(probe_data: dict, sizes: dict[str, int], tries: int = FAIR_TRIES) -> dict:
    """A data seed other than the probe's for a training (or compare) on the probe's data set
    with ``sizes``: the first of the next ``tries`` seeds whose validation sample shares no
    example with the probe's sample (else the one sharing fewest). {"seed", "probe_seed",
    "val_seen" (None: could not be checked), "n_val", "n_probe"}."""
    key = json.dumps(probe_data, sort_keys=True), json.dumps(sizes, sort_keys=True)
    return dict(_fair_seed(*key, tries))


@functools.lru_cache(maxsize=64)
def _fair_seed(probe_data: str, sizes: str, tries: int) -> tuple:
    from floe.experiments.compare import selection_overlap
    from floe.pipeline.data import DataError, data_config
    probe = json.loads(probe_data)
    base = int(probe.get("seed", 42))
    n_probe = int(probe.get("max_samples", 0)) + int(probe.get("val_samples", 0))
    best = None
    for seed in range(base + 1, base + 1 + tries):
        try:
            ours = data_config({**probe, "ratio": 1.0, **json.loads(sizes), "seed": seed})
            seen = selection_overlap(probe, ours)
        except (DataError, OSError, ValueError, TypeError):
            return tuple({"seed": base + 1, "probe_seed": base, "val_seen": None, "n_val": None,
                          "n_probe": n_probe}.items())
        if best is None or seen["val_seen_by_probe"] < best["val_seen"]:
            best = {"seed": seed, "probe_seed": base, "val_seen": seen["val_seen_by_probe"],
                    "n_val": seen["n_val"], "n_probe": n_probe}
        if best["val_seen"] == 0:
            break
    assert best is not None, "at least one seed is tried"
    return tuple(best.items())


def fair_note(fair: dict, who: str = "training") -> str:
    """fair_seed's answer in one sentence: the seed drawn and how many of the validation
    examples that judge the result the probe had seen."""
    seen = ("could not be checked (the data is not readable here)" if fair["val_seen"] is None else
            f"{fair['val_seen']} of its {fair['n_val']} validation examples were in the probe's sample "
            f"of {fair['n_probe']}")
    return (f"Fair: the {who} draws data seed {fair['seed']}, not the probe's {fair['probe_seed']} "
            f"(which chose the layers on its own validation examples): {seen}.")


def fair_training_values(score_run: Run, probe_run: Run) -> tuple[dict[str, str], dict]:
    """The training form's values for layers a probe chose (the analysis's sample sizes and
    batch, as every training here) with a fair data seed; and what fair_seed says."""
    preset = common.training_preset(score_run)
    sizes = {name: int(preset[name]) for name in SIZES if name in preset}
    fair = fair_seed(probe_run.config["data"], sizes)
    return {**preset, "seed": str(fair["seed"])}, fair


# --------------------------------------------------------------------------- costs (floe.app.estimates)
def _costs(score_run: Run, probe_run: Run | None) -> dict:
    """Both selections' costs, timed alike, and whether they saw the same data budget."""
    from floe.app.validation import measured_selection
    from floe.experiments.validation import floe_cost
    if probe_run is not None:
        chosen = measured_selection(score_run, probe_run, 1)
        assert chosen is not None, "a finished probe has a selection"
        return {key: chosen[key] for key in ("seconds", "what", "floe_seconds", "ratio", "probe_data",
                                              "floe_data", "same_data")}
    from floe.app.validation import data_budget
    return {"seconds": None, "what": None, "floe_seconds": floe_cost(score_run, "wall"), "ratio": None,
            "probe_data": None, "floe_data": data_budget(score_run.config["warmup"]["data"]), "same_data": None}


# --------------------------------------------------------------------------- the answer
def recommend(score_run: Run, k: int, jobs: list[JobRecord] | None = None) -> Recommendation:
    """The recommendation for a finished score run at k (see the module's docstring)."""
    from floe.app.training import chosen_layers
    from floe.app.validation import agreement, verdict_label
    n = common.layers(score_run)["n_layers"]
    k = max(1, min(k, n))
    floe_layers = chosen_layers(score_run, "floe", k)
    probes = finished_probes(score_run)
    label = common.run_label(score_run)
    if probes:
        probe = probes[0]
        rec = Recommendation("measured", "probe", k, chosen_layers(probe, "probe", k), score_run, probe,
                             floe_layers, probe_run=probe)
        table = agreement(score_run, probe)
        if "floe" in table:
            rec.floe_check = _check(table["floe"], verdict_label("floe", table["floe"]), "this model and data",
                                    score_run)
        values, fair = fair_training_values(score_run, probe)
        args = ["train", "--policy", "probe", "--probe-run", probe.id, "--k", str(k)]
        rec.train = {"args": args + forms.cli_args(forms.form_options("train"), values), "fair": fair,
                     "label": f"train · probe top-{k} · {label}"}
        rec.costs = _costs(score_run, probe)
    else:
        best = best_checked(score_run)
        policy = best["policy"] if best else "floe"
        rec = Recommendation("best agreement" if best else "unchecked", policy, k,
                             chosen_layers(score_run, policy, k), score_run, score_run, floe_layers)
        if best:
            rec.probe_run = best["probe_run"]
            rec.checked = {"figures": best["figures"], "where": best["where"],
                           "verdict": verdict_label(policy, best["figures"])}
            elsewhere = agreement(best["checked_on"], best["probe_run"]).get("floe")
            if elsewhere:
                rec.floe_check = _check(elsewhere, verdict_label("floe", elsewhere), best["where"],
                                        best["checked_on"])
        args = ["train", "--score-run", score_run.id, "--policy", policy, "--k", str(k)]
        rec.train = {"args": args + forms.cli_args(forms.form_options("train"), common.training_preset(score_run)),
                     "fair": None, "label": f"train · {policy} top-{k} · {label}"}
        rec.costs = _costs(score_run, None)
        rec.pending = pending_probe(score_run, jobs or [])
        values = probe_values(score_run)
        rec.probe = {"args": ["probe", "--score-run", score_run.id]
                     + forms.cli_args(forms.form_options("probe"), values, PROBE_KEEP),
                     "label": f"probe (joint) · {label}", "estimate": probe_estimate(score_run, "joint")}
    if rec.policy != "floe":
        rec.compare = compare_difference(score_run, rec.policy, k, rec.probe_run if rec.source == "measured"
                                         else None)
    rec.lines = panel_lines(rec)
    return rec


def _check(figures: dict, verdict: str, where: str, checked_on: Run | None = None) -> dict:
    """An agreement in the panel's words; ``checked_on``: the score run whose FLoE scores were
    checked, so the line names the warm-up budget the verdict holds at."""
    return {"rho": figures["spearman"], "ci": list(figures["spearman_ci"]), "verdict": verdict, "where": where,
            "budget": common.budget_line(checked_on) if checked_on is not None else None}


def _rho(check: dict) -> str:
    rho, (lo, hi) = check["rho"], check["ci"]
    if rho is None:
        return "ρ undefined"
    return f"ρ {rho:+.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else "")


def _layers(layers: list[int]) -> str:
    return ", ".join(map(str, layers))


def panel_lines(rec: Recommendation) -> dict[str, str]:
    """The panel's sentences (markdown, no user text in them but run ids and names)."""
    k, label = rec.k, POLICIES.get(rec.policy, rec.policy)
    lines = {"title": f"Adapt layers {_layers(rec.layers)} (k = {k})"}
    if rec.source == "measured":
        assert rec.probe_run is not None, "a measured recommendation has its probe"
        schedule = rec.probe_run.config.get("probe", {}).get("schedule", "cells")
        lines["source"] = (f"**Measured** on this model and data: the {schedule} probe `{rec.probe_run.id}` "
                           "adapted each layer and measured its validation-loss gain; these are the "
                           f"{k} layers that gained most.")
    elif rec.source == "best agreement":
        assert rec.checked is not None and rec.probe_run is not None, "a best agreement has its check"
        lines["source"] = (f"**Best agreement so far**: no probe of this model and data yet. The ranking "
                           f"that best predicted measured gains elsewhere is **{label}** ("
                           f"{_rho(_check(rec.checked['figures'], '', ''))} on {rec.checked['where']}, probe "
                           f"`{rec.probe_run.id}`: {rec.checked['verdict']}); here it picks these layers. "
                           "It has not been checked on this data.")
    else:
        lines["source"] = ("**Unchecked**: FLoE's ranking. Nothing has checked it on this model and data, "
                           "and no ranking has predicted measured gains anywhere yet: treat it as a guess "
                           "until the probe below settles it.")
    same = "the same layers" if rec.overlap == k else f"{rec.overlap} of {k} in common"
    lines["floe"] = f"FLoE's top {k}: {_layers(rec.floe_layers)} ({same})."
    if rec.floe_check:
        where = "" if rec.source == "measured" else f" on {rec.floe_check['where']}"
        budget = f" (its scores after {rec.floe_check['budget']})" if rec.floe_check["budget"] else ""
        lines["agreement"] = (f"FLoE's ranking against the measured gains{where}: {_rho(rec.floe_check)}, "
                              f"**{rec.floe_check['verdict']}**{budget}.")
    else:
        lines["agreement"] = "FLoE's ranking: not checked against measured gains (no probe of this model and data)."
    lines["compare"] = _compare_line(rec)
    lines["costs"] = _costs_line(rec)
    fair = rec.train.get("fair")
    if fair:
        lines["fair"] = fair_note(fair)
    if rec.probe is not None:
        lines["probe"] = (f"A probe of this model and data is under way (`{rec.pending}`): this panel "
                          "switches to its measured layers when it finishes." if rec.pending else
                          f"The cheap probe (joint schedule, on the analysis's data budget) settles it: "
                          f"{rec.probe['estimate']['text']}.")
    return lines


def _compare_line(rec: Recommendation) -> str:
    if rec.policy == "floe":
        return ""  # the recommendation is FLoE's own: nothing to compare it with
    c = rec.compare
    if c is None:
        return (f"Held-out compare: none yet of {POLICIES.get(rec.policy, rec.policy)} against FLoE on this "
                "analysis (the Compare page starts one).")
    interval = (f" [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" if c["ci_low"] is not None and c["ci_high"]
                is not None else "")
    at = f"k = {c['k']}" + ("" if c["k"] == c["asked_k"] else f" (not compared at k = {c['asked_k']})")
    seen = "" if c["val_seen"] is None else \
        f", {c['val_seen']} of its {c['n_val']} validation examples seen by the probe"
    return (f"Held-out compare `{c['run']}` ({c['n']} seed(s){seen}): validation loss minus FLoE's at {at}: "
            f"{c['mean']:+.4f}{interval} (lower is better): **{c['verdict']}**.")


def _costs_line(rec: Recommendation) -> str:
    c = rec.costs
    floe = format_seconds(c.get("floe_seconds"))
    if rec.source != "measured":
        extra = "" if rec.policy == "floe" else "; the ranking comes with the same analysis"
        took = f"{floe} on" if c.get("floe_seconds") is not None else "its time not recorded, on"
        return f"Selection cost: FLoE's warm-up + scoring, {took} {c['floe_data']}{extra}."
    ratio = f" ({c['ratio']:.2f}x FLoE)" if c.get("ratio") else ""
    text = f"Selection cost: the probe {format_seconds(c['seconds'])}{ratio}, FLoE's warm-up + scoring {floe}"
    if c["same_data"]:
        return text + f", both on the same data budget ({c['floe_data']})."
    return (text + f". Not the same data budget: the probe measured on {c['probe_data']}, FLoE on "
            f"{c['floe_data']}; the costs are of different budgets (on the same data the joint probe "
            "costs about 1x FLoE, bench/README.md).")
