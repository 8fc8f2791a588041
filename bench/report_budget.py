"""The tables of the budget study (docs/results.md, "The verdict at a larger budget"), from what
bench/budget_study.sh wrote and the runs it names.

    .venv/bin/python -m bench.report_budget [MODEL-DATA ...]   (default: every one found)

For each model and data set: the warm-up ladder (FLoE's, adapter-norm's and LoRA-drop's
agreement with the measured gains at the training budget T, per warm-up size W, with the
agreement at the default probe budget beside it), the ground truth's transfer from the default
budget to T, the fair compare at T, and each selection's cost as a share of the full-layer
training it selects for (the paper's Table 5 view).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bench.report_results import active_seconds, compare_table, versus_table, warmup_summary
from floe.app.validation import verdict_label
from floe.experiments.validation import agreement_table
from floe.method.agreement import agreement, bootstrap_ci, spearman
from floe.pipeline.policies import layer_ranges, probe_ranking, ranking_from
from floe.pipeline.score import load_layers
from floe.store.runs import open_run

RESULTS = Path(os.environ.get("STUDY_OUT") or Path(__file__).parent / "results" / "budget")  # as the study's
POLICIES = ("floe", "adapter-norm", "lora-drop", "deepest")
# The compare's rows: the probe column at T and at the default budget (its singles and its set
# search's set), then the rankings.
PAPER_ROW = "floe, general warm-up (the paper's protocol)"
ORDER = ["probe at T", "probe at default budget", "probe-set at default budget", "adapter-norm", "floe",
         PAPER_ROW, "deepest", "lora-drop"]
# Extra compares at T trained on the same seeds: (file prefix, the policy kept, its row).
EXTRA_COMPARES = (("compare-T-probe-default", "probe", "probe at default budget"),
                  ("compare-T-probe-set", "probe-set", "probe-set at default budget"))


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None


def warmup_ladder(tag: str) -> dict[int, str]:
    """W -> the score run of each analysis the study wrote for ``tag`` (its LADDER and W = 64)."""
    prefix = f"analyze-{tag}-"
    return {int(w): a["run"] for p in RESULTS.glob(f"{prefix}*.json")
            if (w := p.stem[len(prefix):]).isdigit() and (a := _load(p.name))}


def _rho(figures: dict | None, key: str = "spearman") -> str:
    """A figure of an agreement dict (ρ, or partial ρ) with its interval where it has one."""
    if not figures or figures.get(key) is None:
        return "n/a"
    lo, hi = figures.get(f"{key}_ci") or (None, None)
    return f"{figures[key]:+.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else "")


def _probe(run_id: str) -> dict:
    return open_run(run_id).read_json("probe.json")


def ladder_rows(ladder: dict[int, tuple[dict, dict]], truth: dict, default: dict | None) -> list[dict]:
    """Per warm-up size W: its steps, each policy's agreement with the gains at T (and FLoE's
    with the default-budget gains), FLoE's top 8. ``ladder``: W -> (warmup summary, layers.json)."""
    rows = []
    for w, (warm, layers) in sorted(ladder.items()):
        at_t = agreement_table(layers, truth)
        at_default = agreement_table(layers, default) if default else {}
        rows.append({"W": w, "steps": warm["steps"], "examples": warm["n_train"],
                     **{p: at_t.get(p) for p in POLICIES}, "floe@default": at_default.get("floe"),
                     "floe top 8": sorted(layers["ranking"][:8])})
    return rows


def _floe_verdict(figures: dict | None) -> str:
    """What FLoE's ρ at T says, as the Validation page words it, with its partial ρ given the
    layer index: a ranking that predicts only as well as depth does is said to."""
    if not figures or figures["spearman"] is None:
        return "n/a"
    said = verdict_label("floe", figures)
    lo = (figures.get("partial_spearman_ci") or (None,))[0]
    if figures.get("partial_spearman") is None or lo is None:
        return said
    return f"{said} (partial ρ {_rho(figures, 'partial_spearman')})"


def ladder_table(rows: list[dict]) -> str:
    head = ("| warm-up W (examples) | steps | " + " | ".join(f"{p} ρ at T" for p in POLICIES)
            + " | FLoE at T, given depth | floe ρ at default budget | FLoE's top 8 |")
    out = [head, "|" + " --- |" * (len(POLICIES) + 5)]
    for r in rows:
        out.append(f"| {r['W']} | {r['steps']} | " + " | ".join(_rho(r[p]) for p in POLICIES)
                   + f" | {_floe_verdict(r['floe'])} | {_rho(r['floe@default'])} | {layer_ranges(r['floe top 8'])} |")
    return "\n".join(out)


def transfer(default: dict, truth: dict, n_boot: int = 2000) -> dict:
    """Spearman between the per-layer gains at the default probe budget and at T, with a
    bootstrap interval over layers (the layers both measured)."""
    a = dict(zip(default["layers"], default["gain"]))
    b = dict(zip(truth["layers"], truth["gain"]))
    layers = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    x, y = [a[k] for k in layers], [b[k] for k in layers]
    return {"spearman": spearman(x, y), "ci": bootstrap_ci(spearman, [x, y], n_boot), "n": len(layers),
            "top8_overlap": len(set(probe_ranking(default)[:8]) & set(probe_ranking(truth)[:8]))}


def full_probe_rows(full: dict, rankings: dict[str, list[int]]) -> list[dict]:
    """Each ranking's agreement with the full single-layer probe at T on the layers it measured
    (does the joint reading hold at T?): ρ, partial ρ given depth, and how many of the full
    probe's 3 best layers the ranking puts first among them."""
    pairs = [(k, g) for k, g in zip(full["layers"], full["gain"]) if g is not None]
    layers, gains = [k for k, _ in pairs], [g for _, g in pairs]
    if len(layers) < 3:
        return []
    rows = []
    for name, ranking in rankings.items():
        figures = agreement(ranking, gains, layers)
        rows.append({"ranking": name, **figures, "top3": round(figures["precision_at_k"][2] * 3)})
    return rows


def seed_agreement(full: dict) -> tuple[float, int] | None:
    """Spearman between the full probe's first two seeds' gains, over the layers both measured:
    how far the probe agrees with itself, the ceiling of any ranking's agreement with it."""
    if len(full["seeds"]) < 2:
        return None
    a, b = ({c["layer"]: c["gain"] for c in full.get("cells", []) if c["seed"] == s} for s in full["seeds"][:2])
    layers = sorted(set(a) & set(b))
    return (spearman([a[k] for k in layers], [b[k] for k in layers]), len(layers)) if len(layers) >= 3 else None


def full_probe_table(full: dict, rows: list[dict]) -> str:
    cells = len(full["layers"]) * len(full["seeds"])
    gains = ", ".join(f"{k}: {g:.2f}" for k, g in zip(full["layers"], full["gain"]) if g is not None)
    seeds = seed_agreement(full)
    itself = f"; its two seeds agree at ρ {seeds[0]:+.2f} over {seeds[1]} layers" if seeds else ""
    head = (f"Full single-layer probe at T ({len(full.get('cells', []))} of {cells} trainings: layers "
            f"{layer_ranges(full['layers'])}, seeds {', '.join(map(str, full['seeds']))}; mean gain in "
            f"val loss per layer: {gains}{itself}). Each ranking against it, on those layers:")
    out = [head, "", "| ranking | ρ with the full probe at T | partial ρ given depth | of its top 3 |",
           "| --- | --- | --- | --- |"]
    out += [f"| {r['ranking']} | {_rho(r)} | {_rho(r, 'partial_spearman')} | {r['top3']}/3 |" for r in rows]
    return "\n".join(out)


def full_probe_report(tag: str, truth: dict, default: dict | None, ladder: dict[int, dict]) -> str | None:
    """The full probe at T against the joint readings (at T, at the default budget) and the
    warm-up rankings of the largest W and, for FLoE and the update norm, of the smallest (does a
    longer warm-up help?); None before the full probe has 3 layers. ``ladder``: W -> layers.json."""
    run = _load(f"probe-T-full-{tag}.json")
    if not run:
        return None
    full = _probe(run["run"])
    rankings = {"joint probe at T": probe_ranking(truth)}
    if default:
        rankings["joint probe, default budget"] = probe_ranking(default)
    if ladder:
        small, large = min(ladder), max(ladder)
        warm = [p for p in POLICIES if p != "deepest"]
        rankings |= {f"{p} (W={large})": ranking_from(ladder[large], p) for p in warm}
        if small != large:  # the smallest W is the tool's default analysis: what a user sees first
            rankings |= {f"{p} (W={small})": ranking_from(ladder[small], p) for p in ("floe", "adapter-norm")}
        rankings["deepest"] = ranking_from(ladder[large], "deepest")
    rows = full_probe_rows(full, rankings)
    return full_probe_table(full, rows) if rows else None


def cost_rows(analyses: dict[int, str], probes: dict[str, dict], references: dict[str, float]) -> list[dict]:
    """Each selection's wall time, and its share of each reference training (label -> seconds:
    the full-layer training at T, and a full-layer epoch over more examples). ``probes``:
    label -> probe.json."""
    rows = []
    for w, score_id in sorted(analyses.items()):
        score = open_run(score_id)
        seconds = active_seconds(score.config["warmup_run"]) + active_seconds(score_id)
        rows.append({"selection": f"FLoE, warm-up W={w} + scoring", "seconds": seconds})
    if analyses:  # the paper's Table 5 counts the scoring alone (its warm-up is a full-layer epoch)
        w = max(analyses)
        rows.append({"selection": f"FLoE, scoring alone (W={w})", "seconds": active_seconds(analyses[w])})
    for label, probe in probes.items():
        rows.append({"selection": label, "seconds": probe["seconds"]})  # without a set search
        if found := probe.get("set_search"):  # what policy probe-set adds: its search (the curves aside)
            rows.append({"selection": f"{label} + its set search",
                         "seconds": probe["seconds"] + found["search_seconds"]})
    for r in rows:
        r["shares"] = {label: r["seconds"] / s for label, s in references.items() if s}
    return rows


def cost_table(rows: list[dict], references: dict[str, float]) -> str:
    refs = [label for label, s in references.items() if s]
    out = ["| selection | wall (s) | " + " | ".join(f"share of {label}" for label in refs) + " |",
           "| --- | --- |" + " --- |" * len(refs)]
    for r in rows:
        out.append(f"| {r['selection']} | {r['seconds']:.0f} | "
                   + " | ".join(f"{r['shares'][label]:.1%}" for label in refs) + " |")
    for label in refs:  # each reference's own row: 100 % of itself
        out.append(f"| ({label}) | {references[label]:.0f} |"
                   + "".join(" 100 % |" if other == label else " |" for other in refs))
    return "\n".join(out)


def reference_trainings(results: list[dict], analyses: dict[int, str], t_examples: int) -> dict[str, float]:
    """The full-layer trainings a selection's cost is a share of: the compare's all-layer
    training at T (mean over seeds), and the largest warm-up, itself a full-layer epoch over W
    examples with the same batch, length and learning rate (the share as the training grows).
    Before any compare, the warm-up over T's examples stands in for the training at T."""
    full = [active_seconds(r["train_run"]) for r in results if r["policy"] == "all"]
    refs = {"the full-layer training at T": sum(full) / len(full)} if full else {}
    widths = {max(analyses)} if analyses else set()
    if not full and t_examples in analyses:
        widths.add(t_examples)
    for w in sorted(widths):
        refs[f"a full-layer epoch over {w} examples"] = active_seconds(open_run(analyses[w]).config["warmup_run"])
    return refs


def extra_results(tag: str, judged: bool = False) -> list[dict]:
    """The cells of the compares at T trained on the same seeds as ``tag``'s own, each under its
    row: the default-budget probe's columns and, on medical, FLoE from the general set's warm-up
    (the paper's protocol; the one judged by benchmarks too)."""
    extras = [] if judged else [(f"{prefix}-{tag}", policy, row) for prefix, policy, row in EXTRA_COMPARES]
    if tag.endswith("-medical"):
        prefix = "compare-T-judged" if judged else "compare-T"
        extras.append((f"{prefix}-{tag.removesuffix('-medical')}-general-to-medical", "floe", PAPER_ROW))
    results = []
    for name, policy, row in extras:
        if extra := _load(f"{name}.json"):
            more = open_run(extra["run"]).read_json("compare.json")["results"]
            results += [{**r, "policy": row} for r in more if r["policy"] == policy]
    return results


def report(tag: str) -> str:
    parts = [f"### {tag}"]
    truth_run, default_run = _load(f"probe-T-{tag}.json"), _load(f"probe-default-{tag}.json")
    if not truth_run:
        return f"### {tag}\n\n(no probe at T yet)"
    truth = _probe(truth_run["run"])
    default = _probe(default_run["run"]) if default_run else None
    analyses = warmup_ladder(tag)
    ladder = {}
    for w, score_id in analyses.items():
        score = open_run(score_id)
        ladder[w] = (warmup_summary(score.config["warmup_run"]), load_layers(score))
    steps = truth.get("train_steps")
    parts.append(f"Ground truth at T: joint probe, {steps} optimizer steps over "
                 f"{truth['config']['data']['max_samples']} examples; base val loss "
                 f"{truth['base_val_loss']:.3f}; measured top 8: {layer_ranges(sorted(probe_ranking(truth)[:8]))}.")
    parts.append(ladder_table(ladder_rows(ladder, truth, default)))
    if check := full_probe_report(tag, truth, default, {w: layers for w, (_, layers) in ladder.items()}):
        parts.append(check)
    if default:
        t = transfer(default, truth)
        lo, hi = t["ci"]
        parts.append(f"Transfer of the ground truth from the default probe budget to T: Spearman "
                     f"{t['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}] over {t['n']} layers; top-8 overlap "
                     f"{t['top8_overlap']}/8.")
    results = []
    if compare := _load(f"compare-T-{tag}.json"):
        summary = open_run(compare["run"]).read_json("compare.json")
        results = [{**r, "policy": "probe at T" if r["policy"] == "probe" else r["policy"]}
                   for r in summary["results"]]
        results += extra_results(tag)
        base = summary["base"]["metrics"].get("val_loss")
        parts += [compare_table(results, base, ORDER), versus_table(results, "probe at T", ORDER)]
    # Without a compare the costs still have references: FLoE's warm-ups, each a full-layer epoch.
    references = reference_trainings(results, analyses, truth["config"]["data"]["max_samples"])
    probes = {"joint probe, default budget": default} if default else {}
    probes["joint probe at T"] = truth
    if references:
        parts.append(cost_table(cost_rows(analyses, probes, references), references))
    runs = {r[key] for r in results for key in ("train_run", "eval_run")}
    hours = (sum(active_seconds(a) + active_seconds(open_run(a).config["warmup_run"]) for a in analyses.values())
             + sum(p["seconds"] for p in probes.values()) + sum(map(active_seconds, runs))) / 3600
    what = f"the compare's {len(runs)} trainings and evaluations" if runs else "no compare yet"
    parts.append(f"Machine time of these runs (warm-ups, scorings, probes; {what}; pauses excluded): "
                 f"{hours:.1f} h on a 2-core CPU VM.")
    parts += judged_tables(tag)
    return "\n\n".join(parts)


def benchmark_metrics(metrics: dict) -> list[str]:
    """The benchmark metric of each task in a cell's metrics: acc_norm where lm-eval has it, else acc."""
    tasks = sorted({m.rsplit("/", 1)[0] for m in metrics if "/" in m and not m.endswith("_stderr")})
    return [f"{t}/acc_norm" if f"{t}/acc_norm" in metrics else f"{t}/acc" for t in tasks]


def judged_tables(tag: str) -> list[str]:
    """The compare at T judged by benchmarks (the same trainings, evaluated with lm-eval): one table
    per task, with the base model's accuracy beside it."""
    judged = _load(f"compare-T-judged-{tag}.json")
    if not judged:
        return []
    summary = open_run(judged["run"]).read_json("compare.json")
    results = [{**r, "policy": "probe at T" if r["policy"] == "probe" else r["policy"]} for r in summary["results"]]
    results += extra_results(tag, judged=True)
    base = summary["base"]["metrics"]
    out = []
    for metric in benchmark_metrics(results[0]["metrics"]) if results else []:
        out.append(f"Judged by {metric} (lm-eval, base model {base.get(metric, float('nan')):.4f}):\n\n"
                   + compare_table(results, None, ORDER, metric))
    return out


def main(tags: list[str]) -> None:
    found = sorted({p.name[len("probe-T-"):-len(".json")] for p in RESULTS.glob("probe-T-*.json")
                    if not p.name.startswith("probe-T-full-")})
    for tag in tags or found:
        print(report(tag) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
