"""Validation of layer rankings: each policy of a score run against a probe's measured
per-layer gains (floe.method.agreement), and, where a compare run exists for the score
run, each policy's measured top-k result next to it."""
from __future__ import annotations

from floe.experiments.compare import SUMMARY as COMPARE_SUMMARY
from floe.experiments.probe import SUMMARY as PROBE_SUMMARY
from floe.method.agreement import agreement
from floe.pipeline.policies import POLICIES, available_policies, probe_ranking, ranking_from, spread_layers
from floe.pipeline.score import TIMINGS, load_layers
from floe.pipeline.warmup import SUMMARY as WARMUP
from floe.store.artifacts import LayersJson, ProbeJson
from floe.store.runs import DONE, CorruptRunError, Run, list_runs, open_run

__all__ = ["PAPER_WARMUP_STEPS", "STARVED_WARMUP_STEPS", "agreement_table", "budget_curve_runs", "budget_sentence",
           "compare_gains", "direction", "floe_cost", "matching_probes", "matching_score_runs", "probe_cost",
           "same_setup", "validation_summary", "verdict", "warmup_budget"]

# Policies with no ranking of their own to check.
_NOT_RANKINGS = ("all",)


def _measured(probe: ProbeJson) -> list[tuple[int, float]]:
    """(layer, value) pairs a ranking is checked against: the mean gains, or for a cheap
    probe (whose gains compare only within a rung) its ranking's scores n - position."""
    order = probe.get("ranking")
    if order:
        return sorted((k, float(len(order) - i)) for i, k in enumerate(order))
    return [(k, g) for k, g in zip(probe["layers"], probe["gain"]) if g is not None]


def agreement_table(layers: LayersJson, probe: ProbeJson, n_boot: int = 1000,
                    seed: int = 0) -> dict[str, dict]:
    """policy -> agreement figures (spearman, spearman_ci, partial_spearman given depth,
    its CI, precision_at_k) of every ranking this layers.json holds, against the probe's
    mean gains (a cheap probe: its ranking). Layers without a finished cell are left
    out; with 2 layers rho is +-1 by construction (and its interval undefined). Policy
    spread: rho from its farthest-point ranking, precision@k from the k evenly spaced
    layers it adapts (spread over the probed layers when the probe covers a subset)."""
    pairs = _measured(probe)
    if len(pairs) < 2:
        return {}
    probed, gains = [k for k, _ in pairs], [g for _, g in pairs]
    if probe["n_layers"] != layers["n_layers"]:
        raise ValueError(f"the probe has {probe['n_layers']} layers and the score run "
                         f"{layers['n_layers']}: they are of different models")
    ordered = sorted(probed)

    def spread(k: int) -> list[int]:
        return [ordered[i] for i in spread_layers(len(ordered), k)]
    return {policy: agreement(ranking_from(layers, policy), gains, probed, n_boot=n_boot, seed=seed,
                              selection=spread if policy == "spread" else None)
            for policy in available_policies(layers) if policy not in _NOT_RANKINGS}


# The paper warms up for one epoch over Databricks-Dolly-15K at batch 1: ~15,000 optimizer
# steps. Below this many steps an adapter has barely moved, and so may FLoE's scores.
STARVED_WARMUP_STEPS = 100
PAPER_WARMUP_STEPS = 15_000


def warmup_budget(score_run: Run) -> dict:
    """What FLoE's scores of ``score_run`` were computed after: the warm-up's optimizer
    steps, examples, tokens per example (cap) and tokens trained on (from its progress log;
    None when it has none), and whether that is under STARVED_WARMUP_STEPS."""
    warm_cfg = score_run.config["warmup"]
    data, train = warm_cfg["data"], warm_cfg["train"]
    steps, examples, tokens = None, None, None
    try:
        warm = open_run(score_run.config["warmup_run"])
        summary = warm.read_json(WARMUP)
        steps, examples = summary["steps"], summary["n_train"]
        last = [r for r in warm.progress() if r.get("event") == "step"][-1:]
        if last and "tokens_per_s" in last[0] and "elapsed" in last[0]:
            tokens = round(last[0]["tokens_per_s"] * last[0]["elapsed"])
    except (CorruptRunError, FileNotFoundError, KeyError, ValueError):
        pass
    return {"steps": steps, "examples": examples, "max_length": data.get("max_length"),
            "epochs": train.get("epochs"), "batch_size": train.get("batch_size"), "tokens": tokens,
            "starved": steps is not None and steps < STARVED_WARMUP_STEPS}


def budget_sentence(budget: dict) -> str:
    """The warm-up budget in words, with a plain note when the adapter barely trained."""
    if budget["steps"] is None:
        return "Warm-up budget unknown (its warm-up run is not in this cache)."
    tokens = f", {budget['tokens']:,} tokens" if budget["tokens"] else ""
    text = (f"FLoE's scores here come from a warm-up of {budget['steps']} optimizer steps over "
            f"{budget['examples']} examples (≤ {budget['max_length']} tokens each{tokens}).")
    if budget["starved"]:
        text += (f" That adapter has barely trained (under {STARVED_WARMUP_STEPS} steps; the paper's "
                 f"warm-up took about {PAPER_WARMUP_STEPS:,}): FLoE's Fisher terms may say little at this "
                 "budget. Every agreement figure below holds at this budget only.")
    return text


def direction(figures: dict) -> str:
    """What the interval of a ranking's ρ with the measured gains says: "predicts" (above 0),
    "chance" (includes 0, or undefined) or "away" (below 0: it points away from the useful layers)."""
    lo, hi = figures["spearman_ci"]
    if figures["spearman"] is None or lo is None or hi is None or lo <= 0 <= hi:
        return "chance"
    return "predicts" if lo > 0 else "away"


def verdict(policy: str, figures: dict) -> str | None:
    """A plain sentence when a ranking is no better than random or than depth, or points away
    from the useful layers; None when its intervals say it carries signal of its own."""
    label = POLICIES.get(policy, policy)
    said = direction(figures)
    if said == "away":
        lo, hi = figures["spearman_ci"]
        return (f"{label}: points away from the useful layers (ρ {figures['spearman']:+.2f}, its 95 % "
                f"interval [{lo:+.2f}, {hi:+.2f}] is below 0).")
    if said == "chance":
        return f"{label}: no better than a random ranking (the 95 % interval of ρ includes 0)."
    if policy in ("deepest", "shallowest"):
        return None
    partial_lo = figures["partial_spearman_ci"][0]
    if figures["partial_spearman"] is None or partial_lo is None or partial_lo <= 0:
        return (f"{label}: no better than depth (given the layer index, the 95 % interval of "
                "its partial ρ includes 0).")
    return None


def compare_gains(score_run: Run, metric: str = "val_loss") -> dict[str, dict]:
    """policy -> {k: {mean, half_width, gain}} of the newest compare run on this score run,
    gain being the base model's metric minus the policy's (a loss: positive is better)."""
    runs = [r for r in list_runs() if r.kind == "compare" and r.file(COMPARE_SUMMARY).exists()]
    for run in runs:
        try:
            if run.config.get("score_run") != score_run.id:
                continue
            summary = run.read_json(COMPARE_SUMMARY)
        except (OSError, ValueError, KeyError):
            continue
        base = summary["base"]["metrics"].get(metric)
        out: dict[str, dict] = {}
        for cell in summary["cells"]:
            if cell["metric"] == metric:
                out.setdefault(cell["policy"], {})[cell["k"]] = {
                    "mean": cell["mean"], "half_width": cell["half_width"],
                    "gain": None if base is None else base - cell["mean"], "compare_run": run.id}
        return out
    return {}


def probe_cost(probe: ProbeJson) -> dict:
    """What a probe's selection cost, on the basis its run records support, which FLoE's
    cost is then taken on too (``floe_cost``): a cheap probe's wall time of the whole run
    (basis ``wall``: its one model load, every training and validation); for a cell probe
    the sum of its cells' training times (basis ``training``: model loads and validations
    excluded, so a lower bound)."""
    if probe.get("seconds") is not None:
        return {"seconds": probe["seconds"], "basis": "wall",
                "what": f"{probe.get('schedule')} probe: wall time of the run, its model load included "
                        "(FLoE: the warm-up's and the scoring's wall times, their loads included)"}
    trained = [c["train_seconds"] for c in probe["cells"] if c.get("train_seconds") is not None]
    return {"seconds": sum(trained) if trained else None, "basis": "training",
            "what": f"{len(trained)} cells: training time only, loads and validations excluded "
                    "(FLoE: the warm-up's training time and the scoring's stages, loads excluded)"}


def floe_cost(score_run: Run, basis: str = "wall") -> float | None:
    """FLoE's selection cost, warm-up plus scoring, on a probe's ``basis`` (None where the
    runs do not record it):

    * ``wall``: the warm-up run's wall time (its state's started to finished: model load,
      validations, training) plus the scoring's (timings.json total, its load included);
    * ``training``: the warm-up's training time (warmup.json seconds) plus the scoring's
      stages (timings.json's per-stage seconds: its model load excluded)."""
    if basis not in ("wall", "training"):
        raise ValueError(f"unknown cost basis {basis!r}: wall or training")
    try:
        warm = open_run(score_run.config["warmup_run"], score_run.path.parent.parent)
        timings = score_run.read_json(TIMINGS)
        if basis == "wall":
            state = warm.state
            return state["finished"] - state["started"] + timings["total"]
        # The stages' seconds are floats; the environment's fields are strings and an int.
        stages = sum(v for name, v in timings.items() if name != "total" and isinstance(v, float))
        return warm.read_json(WARMUP)["seconds"] + stages
    except (OSError, ValueError, KeyError, TypeError, CorruptRunError):
        return None


def same_setup(score_run: Run, probe_run: Run) -> bool:
    """Whether a probe measured the model and data the score run was computed on."""
    try:
        warm, probe = score_run.config["warmup"], probe_run.config
        return (warm["model"] == probe["model"] and warm["data"]["data"] == probe["data"]["data"])
    except (KeyError, TypeError, ValueError, OSError):
        return False


def matching_probes(score_run: Run) -> list[Run]:
    """Probe runs (finished or with cells so far) on the score run's model and data."""
    return [r for r in list_runs() if r.kind == "probe" and r.file(PROBE_SUMMARY).exists()
            and same_setup(score_run, r)]


def matching_score_runs(probe_run: Run) -> list[Run]:
    return [r for r in list_runs() if r.kind == "score" and r.status == DONE and same_setup(r, probe_run)]


def budget_curve_runs(score_run: Run, probe_run: Run) -> list[Run]:
    """The score runs of the budget curve: finished, on the probe's model and data, with
    ``score_run``'s scoring settings, one per warm-up length (the newest), shortest first."""
    by_steps: dict[int, Run] = {}
    for run in matching_score_runs(probe_run):  # newest first
        if run.config.get("score") == score_run.config.get("score"):
            steps = warmup_budget(run)["steps"]
            if steps is not None:
                by_steps.setdefault(steps, run)
    return [by_steps[steps] for steps in sorted(by_steps)]


def validation_summary(probe_run: Run, score_run: Run | None = None, n_boot: int = 1000) -> dict:
    """What ``floe probe --json`` prints: the gains, and the agreement of every policy of
    the given score run (default: the newest on the same model and data) with them."""
    probe: ProbeJson = probe_run.read_json(PROBE_SUMMARY)
    if score_run is None:
        candidates = matching_score_runs(probe_run)
        score_run = candidates[0] if candidates else None
    table = agreement_table(load_layers(score_run), probe, n_boot) if score_run else {}
    return {"run": probe_run.id, "path": str(probe_run.path), "model": probe["model"],
            "data": probe["data"], "mode": probe["mode"], "layers": probe["layers"],
            "seeds": probe["seeds"], "gain": probe["gain"], "ranking": probe_ranking(probe),
            "schedule": probe.get("schedule", "cells"), "cost": probe_cost(probe),
            "gain_ci": [[c.get("ci_low"), c.get("ci_high")] for c in probe["gain_ci"]],
            "base_val_loss": probe["base_val_loss"], "cell_seconds": probe["cell_seconds"],
            "partial": probe["partial"], "score_run": score_run.id if score_run else None,
            "agreement": table,
            "verdicts": [v for p, f in table.items() if (v := verdict(p, f))],
            "warmup_budget": warmup_budget(score_run) if score_run else None,
            "compare": compare_gains(score_run) if score_run else {}}
