"""Validation of layer rankings: each policy of a score run against a probe's measured
per-layer gains (floe.method.agreement), and, where a compare run exists for the score
run, each policy's measured top-k result next to it."""
from __future__ import annotations

from floe.experiments.compare import SUMMARY as COMPARE_SUMMARY
from floe.experiments.probe import SUMMARY as PROBE_SUMMARY
from floe.experiments.probe import ProbeJson
from floe.method.agreement import agreement
from floe.pipeline.policies import POLICIES, available_policies, probe_ranking, ranking_from
from floe.pipeline.score import TIMINGS, LayersJson, load_layers
from floe.pipeline.warmup import SUMMARY as WARMUP
from floe.store.runs import DONE, Run, list_runs, open_run

__all__ = ["agreement_table", "compare_gains", "floe_cost", "matching_probes", "matching_score_runs",
           "probe_cost", "same_setup", "validation_summary", "verdict"]

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
    out; with 2 layers rho is +-1 by construction (and its interval undefined)."""
    pairs = _measured(probe)
    if len(pairs) < 2:
        return {}
    probed, gains = [k for k, _ in pairs], [g for _, g in pairs]
    if probe["n_layers"] != layers["n_layers"]:
        raise ValueError(f"the probe has {probe['n_layers']} layers and the score run "
                         f"{layers['n_layers']}: they are of different models")
    return {policy: agreement(ranking_from(layers, policy), gains, probed, n_boot=n_boot, seed=seed)
            for policy in available_policies(layers) if policy not in _NOT_RANKINGS}


def verdict(policy: str, figures: dict) -> str | None:
    """A plain sentence when a ranking is no better than random or than depth; None when
    its intervals say it carries signal of its own."""
    label = POLICIES.get(policy, policy)
    lo = figures["spearman_ci"][0]
    if figures["spearman"] is None or lo is None or lo <= 0:
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
    """What a probe's selection cost: a cheap probe's whole wall time (one load, every
    training and validation); for a cell probe the sum of its cells' training times
    (model loads and validations excluded, so a lower bound)."""
    if probe.get("seconds") is not None:
        return {"seconds": probe["seconds"], "what": f"{probe.get('schedule')} probe, wall time"}
    trained = [c["train_seconds"] for c in probe["cells"] if c.get("train_seconds") is not None]
    return {"seconds": sum(trained) if trained else None,
            "what": f"{len(trained)} cells, training time only (loads and validations excluded)"}


def floe_cost(score_run: Run) -> float | None:
    """FLoE's selection cost: the warm-up's training time plus the scoring's wall time."""
    try:
        warm = open_run(score_run.config["warmup_run"], score_run.path.parent.parent)
        return warm.read_json(WARMUP)["seconds"] + score_run.read_json(TIMINGS)["total"]
    except (OSError, ValueError, KeyError, TypeError):
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
            "compare": compare_gains(score_run) if score_run else {}}
