"""The tables of docs/results.md, from what bench/ground_truth.sh wrote and the runs it names.

    .venv/bin/python -m bench.report_results [MODEL-DATA ...]   (default: every one found)

For each model and data set: the probe's agreement table, the fair compare (each policy's
validation loss at k = 4 and 8, and its difference to FLoE paired by training seed), and the
selection costs next to the sparse and full-layer training times; then one line per setting
(the summary at the top of docs/results.md).
"""
from __future__ import annotations

import functools
import itertools
import json
import statistics
import sys
from pathlib import Path

from floe.experiments.compare import paired_differences
from floe.method.agreement import spearman
from floe.method.stats import mean_ci
from floe.pipeline.policies import layer_ranges
from floe.store.artifacts import WARMUP
from floe.store.runs import DONE, health, list_runs, open_run

RESULTS = Path(__file__).parent / "results" / "ground_truth"
# What the reports read of runs a fresh machine no longer holds (bench/study_archive.sh keeps
# the small runs, not the trainings and warm-ups): their machine time, a warm-up's summary.
KEPT_RUNS = Path(__file__).parent / "study" / "runs.json"
ORDER = ["probe", "cheap probe", "adapter-norm", "floe", "deepest", "lora-drop", "ht-sr", "random"]


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None


def _fmt_ci(value, ci) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci and None not in ci else f"{value:+.2f}"


def agreement_table(probe: dict) -> str:
    rows = ["| policy | Spearman ρ [95 % CI] | partial ρ given depth [95 % CI] | P@4 | P@8 |",
            "| --- | --- | --- | --- | --- |"]
    for policy, a in probe["agreement"].items():
        p = a["precision_at_k"]
        rows.append(f"| {policy} | {_fmt_ci(a['spearman'], a.get('spearman_ci'))} | "
                    f"{_fmt_ci(a.get('partial_spearman'), a.get('partial_spearman_ci'))} | "
                    f"{p[3]:.2f} | {p[7]:.2f} |")
    return "\n".join(rows)


def gains_line(probe: dict) -> str:
    top = probe["ranking"][:8]
    return (f"base val loss {probe['base_val_loss']:.3f}; measured top 8: {', '.join(map(str, top))}; "
            f"gains " + ", ".join(f"{layer}: {g:.2f}" for layer, g in zip(probe["layers"], probe["gain"])))


@functools.cache
def _fair_compare(tag: str) -> tuple[str, dict, list[dict]] | None:
    """The fair compare's run id, its compare.json and its results, the cheap probe's column (a second
    compare) included; read once per tag."""
    fair = _load(f"fair-compare-{tag}.json")
    if not fair:
        return None
    summary = open_run(fair["run"]).read_json("compare.json")
    results = list(summary["results"])
    cheap = _load(f"fair-compare-cheap-{tag}.json")
    if cheap:
        extra = open_run(cheap["run"]).read_json("compare.json")["results"]
        results += [{**r, "policy": "cheap probe"} for r in extra]
    return fair["run"], summary, results


def val_loss_differences(results: list[dict], reference: str,
                         metric: str = "val_loss") -> dict[tuple[str, int], dict]:
    """Each policy's ``metric`` minus ``reference``'s, paired by seed, by (policy, k)."""
    return {(c["policy"], c["k"]): c for c in paired_differences(results, reference, 0.95)
            if c["metric"] == metric}


def compare_table(results: list[dict], base: float | None, order: list[str] = ORDER,
                  metric: str = "val_loss") -> str:
    """``metric`` (default the val loss) mean ± t half-width per (policy, k), and the difference
    to FLoE paired by seed."""
    ks = sorted({r["k"] for r in results if r["policy"] != "all"})
    diffs = val_loss_differences(results, "floe", metric)
    name = "val loss" if metric == "val_loss" else metric
    head = "| policy | " + " | ".join(f"k={k}: layers | {name} | minus floe" for k in ks) + " |"
    rows = [head, "|---" * (1 + 3 * len(ks)) + "|"]
    for policy in [p for p in order if any(r["policy"] == p for r in results)]:
        line = [policy]
        for k in ks:
            cell = [r for r in results if r["policy"] == policy and r["k"] == k and metric in r["metrics"]]
            if not cell:
                line += ["", "", ""]
                continue
            layers = {tuple(r["layers"]) for r in cell}
            line.append(layer_ranges(next(iter(layers))) if len(layers) == 1 else "per seed")
            line.append(_mean_pm(mean_ci([r["metrics"][metric] for r in cell])))
            d = diffs.get((policy, k))
            line.append(_signed(d) if d else "")
        rows.append("| " + " | ".join(line) + " |")
    full = [r["metrics"][metric] for r in results if r["policy"] == "all" and metric in r["metrics"]]
    if full:
        before = f"; base model {base:.4f}" if base is not None else ""
        rows.append(f"\nAll layers: {name} {_mean_pm(mean_ci(full))}{before}.")
    return "\n".join(rows)


def versus_table(results: list[dict], reference: str, order: list[str] = ORDER) -> str:
    """``reference`` minus every other policy, paired by seed (negative: reference is better)."""
    diffs = val_loss_differences(results, reference)
    if not diffs:
        return f"({reference}: no cells yet)"
    ks = sorted({k for _, k in diffs})
    rows = [f"| {reference} minus | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (1 + len(ks)) + "|"]
    for policy in [p for p in order if any(q == p for q, _ in diffs)]:
        rows.append(f"| {policy} | " + " | ".join(
            _versus(diffs[policy, k]) if (policy, k) in diffs else "" for k in ks) + " |")
    return "\n".join(rows)


def _mean_pm(cell: dict, sign: str = "") -> str:
    """mean ± t half-width; one seed has no interval."""
    hw = cell["half_width"]
    return f"{cell['mean']:{sign}.4f} " + (f"± {hw:.4f}" if hw is not None else "(1 seed)")


def _signed(cell: dict) -> str:
    """A paired difference: signed mean ± half-width, * when its interval excludes 0."""
    return f"{_mean_pm(cell, '+')}{' *' if _excludes_zero(cell) else ''}"


def _versus(cell: dict) -> str:
    """The reference minus the policy: the paired difference (policy minus reference) negated."""
    if not any(cell["values"]):
        return "0 (the same layers)"
    return _signed({**cell, "mean": -cell["mean"]})


def _excludes_zero(cell: dict) -> bool:
    return cell["ci_low"] is not None and (cell["ci_low"] > 0 or cell["ci_high"] < 0)


def _kept(run_id: str, field: str, kept: Path):
    """What ``keep_runs`` kept of a run this cache does not hold (FileNotFoundError: nothing)."""
    value = json.loads(kept.read_text()).get(run_id, {}).get(field) if kept.is_file() else None
    if value is None:
        raise FileNotFoundError(f"no run {run_id!r} in this cache, nor its {field} in {kept}")
    return value


def active_seconds(run_id: str, kept: Path = KEPT_RUNS) -> float:
    """A run's wall time, or for a run that logs optimizer steps, ``stepped_seconds``; for a
    run this cache does not hold, the figure ``keep_runs`` kept of it."""
    try:
        run = open_run(run_id)
    except FileNotFoundError:
        return _kept(run_id, "seconds", kept)
    stepped = stepped_seconds(run.progress())
    return stepped if stepped is not None else run.state["finished"] - run.state["started"]


def warmup_summary(run_id: str, kept: Path = KEPT_RUNS) -> dict:
    """A warm-up run's warmup.json, or what ``keep_runs`` kept of it."""
    try:
        return open_run(run_id).read_json(WARMUP)
    except FileNotFoundError:
        return _kept(run_id, "warmup", kept)


def keep_runs(kept: Path = KEPT_RUNS) -> int:
    """Add each finished run of the cache to ``kept``: its ``active_seconds`` and, for a
    warm-up, its warmup.json (runs already there stay); how many runs it now holds."""
    facts = json.loads(kept.read_text()) if kept.is_file() else {}
    for run in list_runs():
        if run.id not in facts and health(run) == DONE:
            try:
                facts[run.id] = {"seconds": round(active_seconds(run.id, kept), 3)}
            except KeyError:  # a shared run (no lock held, so no start of its own): no time of its own
                facts[run.id] = {}
            if run.kind == "warmup":
                facts[run.id]["warmup"] = run.read_json(WARMUP)
    kept.write_text(json.dumps(dict(sorted(facts.items())), indent=1) + "\n")
    return len(facts)


def stepped_seconds(events: list[dict]) -> float | None:
    """Optimizer steps times the median interval between two logged steps (None: under three
    steps logged). Not the wall time: the study pauses its job while tests run and a session's
    end kills it (the rerun starts again or resumes), and neither is the cost of the run."""
    steps = [e for e in events if e.get("event") == "step"]
    if len(steps) < 3:
        return None
    typical = statistics.median(b["time"] - a["time"] for a, b in zip(steps, steps[1:]))
    return typical * steps[-1]["total_steps"]


def cost_table(analyze: dict, probe: dict, cheap: dict | None, results: list[dict]) -> str:
    """Selection wall time (each run's own, from its state) next to the training times of
    the compare (train_seconds of its cells, the same run and load)."""
    score = open_run(analyze["run"])
    floe_s = active_seconds(score.id) + active_seconds(score.config["warmup_run"])
    probe_s = active_seconds(probe["run"])
    rows = ["| what | wall (s) | x FLoE selection |", "| --- | --- | --- |",
            f"| FLoE selection (warm-up + scoring) | {floe_s:.0f} | 1.00 |",
            f"| full probe ({len(probe['seeds'])} seeds x {len(probe['layers'])} layers) | "
            f"{probe_s:.0f} | {probe_s / floe_s:.2f} |"]
    if cheap:
        cheap_s = active_seconds(cheap["run"])
        rows.append(f"| cheap probe (joint, 1 seed) | {cheap_s:.0f} | {cheap_s / floe_s:.2f} |")
    for k in sorted({r["k"] for r in results}, reverse=True):
        t = statistics.fmean(r["train_seconds"] for r in results if r["k"] == k)
        what = "full-layer training" if any(r["policy"] == "all" and r["k"] == k for r in results) \
            else f"sparse training, k={k} (mean over policies and seeds)"
        rows.append(f"| {what} | {t:.0f} | {t / floe_s:.2f} |")
    return "\n".join(rows)


def report(tag: str) -> str:
    analyze, probe = _load(f"analyze-{tag}.json"), _load(f"probe-{tag}.json")
    if not analyze or not probe:
        return f"## {tag}\n\n(no finished analysis and probe yet)\n"
    out = [f"## {tag}", "", f"Probe {probe['run']} ({len(probe['seeds'])} seeds), score run {analyze['run']}:",
           gains_line(probe), "", agreement_table(probe), ""]
    fair, cheap = _fair_compare(tag), _load(f"cheap-probe-{tag}.json")
    if fair:
        run, summary, results = fair
        base = summary["base"]["metrics"]["val_loss"]
        selection = summary.get("selection", {})
        done = f"partial: {len(summary['results'])} cells so far; " if summary["partial"] else ""
        out += [f"Fair compare {run} ({done}val examples seen by the probe: "
                f"{selection.get('val_seen_by_probe', '?')}; * = interval excludes 0):", "",
                compare_table(results, base), "", versus_table(results, "probe"), "",
                versus_table(results, "cheap probe"), "", cost_table(analyze, probe, cheap, results), ""]
    return "\n".join(out)


def cross_data(tags: list[str]) -> str:
    """Spearman between the measured gains of two data sets on the same model: is a layer's
    utility a property of the model, or of the data?"""
    probes = {tag: _load(f"probe-{tag}.json") for tag in tags}
    lines = []
    for a, b in itertools.combinations([t for t in tags if probes[t]], 2):
        pa, pb = probes[a], probes[b]
        if pa["model"] == pb["model"] and pa["layers"] == pb["layers"]:
            lines.append(f"Spearman of the measured gains, {a} vs {b}: {spearman(pa['gain'], pb['gain']):+.2f}")
    return "\n".join(lines)


def overview_row(tag: str, probe: dict, cheap: dict | None, results: list[dict]) -> str:
    """One setting in a line: FLoE's and adapter-norm's agreement with the probe, how far the
    measured choices beat FLoE's (paired by seed), and how well the cheap probe's ranking
    matches the full probe's."""
    agree = probe["agreement"]
    diffs = val_loss_differences(results, "floe")
    cells = [tag] + [_fmt_ci(agree[p]["spearman"], agree[p].get("spearman_ci")) if p in agree else "n/a"
                     for p in ("floe", "adapter-norm")]
    for policy in ("probe", "cheap probe"):
        for k in (4, 8):
            d = diffs.get((policy, k))
            cells.append(_signed(d) if d else "")
    cells.append(f"{spearman(cheap['gain'], probe['gain']):+.2f}" if cheap else "")
    return "| " + " | ".join(cells) + " |"


OVERVIEW_HEAD = ("| setting | FLoE ρ | adapter-norm ρ | probe minus floe, k=4 | k=8 | "
                 "cheap probe minus floe, k=4 | k=8 | cheap vs full probe ρ |\n"
                 "| --- | --- | --- | --- | --- | --- | --- | --- |")


def overview(tags: list[str]) -> str:
    rows = [OVERVIEW_HEAD]
    for tag in tags:
        probe, fair = _load(f"probe-{tag}.json"), _fair_compare(tag)
        if probe and fair:
            rows.append(overview_row(tag, probe, _load(f"cheap-probe-{tag}.json"), fair[2]))
    return "\n".join(rows)


def main(tags: list[str]) -> None:
    tags = tags or sorted(p.name[len("probe-"):-len(".json")] for p in RESULTS.glob("probe-*.json"))
    print("\n".join([*(report(tag) for tag in tags), cross_data(tags), "", overview(tags)]))


if __name__ == "__main__":
    main(sys.argv[1:])
