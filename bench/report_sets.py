"""The tables of docs/results.md's set-search section (issue 20), from what bench/calibration.sh
wrote and the runs it names.

    .venv/bin/python -m bench.report_sets [SUFFIX ...]   (default: every calibration found)

For each (model, data, judging sample): the compare of probe-set (forward selection on the joint
probe) against the top-k singles and the other rankings, probe-set's paired difference to each,
the goal count (cells where probe-set is at or below the singles, and strictly below with the
interval excluding 0), the calibration of the predicted curve against the trained cells, and
the search's cost against the joint probe's training.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.report_results import compare_table, val_loss_differences, versus_table
from floe.experiments.calibration import calibration, differing_settings
from floe.store.runs import open_run

RESULTS = Path(__file__).parent / "results" / "calibration"
ORDER = ["probe-set", "probe", "adapter-norm", "floe", "deepest"]


def goal_count(results: list[dict]) -> dict:
    """probe-set minus probe per k, paired by seed: how many cells at or below 0, and how many
    strictly below or above with the interval excluding 0 (cells with the same layers are ties)."""
    cells = {k: c for (p, k), c in val_loss_differences(results, "probe").items() if p == "probe-set"}
    same = [k for k, c in cells.items() if not any(c["values"])]
    at_or_below = [k for k, c in cells.items() if c["mean"] <= 0]
    below = [k for k, c in cells.items() if c["ci_high"] is not None and c["ci_high"] < 0]
    above = [k for k, c in cells.items() if c["ci_low"] is not None and c["ci_low"] > 0]
    return {"cells": len(cells), "same_layers": sorted(same), "at_or_below": sorted(at_or_below),
            "strictly_below": sorted(below), "strictly_above": sorted(above)}


def search_line(search: dict) -> str:
    fwd, bwd = (search["mean_loss"][d] for d in ("forward", "backward"))
    suggested = search["suggested"]
    cost = search["search_seconds"] + search["curve_seconds"]
    verdict = (f"a tie to 3 decimals, {search['better']} kept" if round(fwd, 3) == round(bwd, 3)
               else f"{search['better']} better")
    return (f"Forward selection mean predicted loss {fwd:.3f}, backward elimination {bwd:.3f} "
            f"({verdict}); suggested k {suggested.get('k', 'n/a')}; search and curves "
            f"{cost:.0f} s against the joint training's {search['train_seconds']:.1f} s "
            f"({cost / search['train_seconds']:.0f}x; {search['validation_passes']} validation passes).")


def calibration_line(found: dict) -> str:
    lo, hi = found["spearman_ci"] or (None, None)
    interval = f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else ""
    differ = ", ".join(f"{k}: {v}" for k, v in found["conditions"].items()) or "none"
    rho = "n/a (fewer than 3 sets)" if found["spearman"] is None else f"{found['spearman']:+.2f}{interval}"
    gap = "n/a" if found["mean_gap"] is None else f"{found['mean_gap']:+.3f} nats"
    return (f"Calibration: Spearman {rho} over {len(found['cells'])} "
            f"distinct sets; trained minus predicted {gap} on average; "
            f"settings that differ between probe and compare: {differ}.")


def report(path: Path) -> str:
    """One calibration.sh output (its probe and compare runs), recomputed from the runs."""
    named = json.loads(path.read_text())
    probe, compare = open_run(named["probe_run"]), open_run(named["compare_run"])
    summary, search = compare.read_json("compare.json"), probe.read_json("probe.json")["set_search"]
    found = calibration(search, summary, differing_settings(probe.config, compare.config))
    results, base = summary["results"], summary["base"]["metrics"].get("val_loss")
    goal = goal_count(results)
    seeds = sorted({r["seed"] for r in results})
    parts = [f"### {path.stem.removeprefix('calibration-')} (probe {probe.id}, compare {compare.id}, "
             f"training seeds {', '.join(map(str, seeds))})",
             compare_table(results, base, ORDER), versus_table(results, "probe-set", ORDER),
             f"probe-set against the top-k singles: at or below in {len(goal['at_or_below'])} of "
             f"{goal['cells']} cells (k = {goal['at_or_below']}; the same layers at k = {goal['same_layers']}), "
             f"strictly below with the interval excluding 0 in {len(goal['strictly_below'])} "
             f"(k = {goal['strictly_below']}); above with the interval excluding 0 in "
             f"{len(goal['strictly_above'])} (k = {goal['strictly_above']}).",
             calibration_line(found), search_line(search)]
    return "\n\n".join(parts)


def main(suffixes: list[str]) -> None:
    paths = ([RESULTS / f"calibration-{s}.json" for s in suffixes] if suffixes
             else sorted(RESULTS.glob("calibration-*.json")))
    for path in paths:
        if path.is_file() and path.stat().st_size:
            print(report(path) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
