"""The Compare page: every policy's held-out result (``floe compare``) against FLoE's, paired
by training seed, with the probe's row, the base model and the all-layer adapter, in a
precision that keeps the differences visible, and whether the probe's own data judged it.

No Streamlit here; the numbers come from compare.json (floe.experiments.compare)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from floe.app.common import run_json, skip_corrupt
from floe.app.recommend import difference_verdict
from floe.pipeline.policies import POLICIES
from floe.store.artifacts import CompareJson
from floe.store.runs import DONE, Run, list_runs

__all__ = ["FAIR_POLICIES", "compare_label", "compare_payload", "compare_runs", "compare_runs_where", "compare_summary",
           "compare_table", "fair_policies", "fairness", "format_value", "lower_is_better"]

SUMMARY = "compare.json"
# What a fair compare started here compares, where the score run (or the chosen probe run)
# holds them: the measured choices, FLoE and the heuristics that did best in docs/results.md.
FAIR_POLICIES = ("probe", "probe-set", "floe", "adapter-norm", "deepest", "lora-drop")


def fair_policies(available: list[str], measured: Sequence[str] = ()) -> list[str]:
    """The policies a compare started here compares: FAIR_POLICIES this score run holds, and
    the measured ones (``probe``, ``probe-set`` with a set search) the chosen probe run offers
    (floe.app.setsearch.offered_by)."""
    return [p for p in FAIR_POLICIES if p in available or p in measured]


def compare_runs(score_run: Run, root: Path | None = None) -> list[Run]:
    """Compare runs of this score run with results so far (finished or running), newest first."""
    return compare_runs_where("score_run", score_run.id, root)


def compare_runs_where(field: str, run_id: str, root: Path | None = None) -> list[Run]:
    """Compare runs with results so far whose config names ``run_id`` as ``field``
    (``score_run``, ``probe_run``), newest first; damaged ones left out."""
    out = []
    for run in list_runs(root):
        if run.kind != "compare" or not run.file(SUMMARY).exists():
            continue
        with skip_corrupt():
            if run.config.get(field) == run_id:
                out.append(run)
    return out


def compare_payload(run: Run) -> CompareJson:
    """compare.json: checked against its checksum once finished, as written so far while running."""
    return run_json(run, SUMMARY) if run.status == DONE else run.read_json(SUMMARY)


def compare_label(run: Run) -> str:
    p = compare_payload(run)
    cfg = p["config"]
    state = "partial" if p["partial"] else "done"
    seed = (run.config.get("data") or {}).get("seed")
    data_seed = f" · data seed {seed}" if seed is not None else ""
    return (f"k {', '.join(map(str, cfg.get('ks', [])))} · {', '.join(cfg.get('policies', []))} · "
            f"{len(cfg.get('seeds', []))} seed(s){data_seed} · {state} · {run.id.split('-', 1)[1][:6]}")


def lower_is_better(metric: str) -> bool:
    """Losses and perplexities: lower is better; accuracies: higher."""
    return "acc" not in metric


def format_value(metric: str, value: float | None, signed: bool = False) -> str:
    """Accuracies in percent with 2 decimals; losses with 4 decimals; perplexities with 4
    significant figures (differences between nearby values stay visible)."""
    if value is None or not math.isfinite(value):
        return "–"
    sign = "+" if signed else ""
    if "acc" in metric:
        return f"{value * 100:{sign}.2f} %"
    if metric == "perplexity" and value != 0:
        decimals = max(0, 3 - math.floor(math.log10(abs(value))))
        return f"{value:{sign}.{decimals}f}"
    return f"{value:{sign}.4f}"


def _interval(metric: str, cell: Mapping[str, Any]) -> str:
    lo, hi = cell.get("ci_low"), cell.get("ci_high")
    if lo is None or hi is None:
        return "–"
    return f"[{format_value(metric, lo, True)}, {format_value(metric, hi, True)}]"


def _differences(payload: CompareJson, metric: str) -> tuple[str, dict[tuple[int, str], dict[str, Any]]]:
    """(reference policy, (k, policy) -> paired difference cell) of one metric."""
    diffs: dict[str, Any] = dict(payload.get("differences") or {})
    cells = {(c["k"], c["policy"]): dict(c) for c in diffs.get("cells", []) if c["metric"] == metric}
    return diffs.get("reference", "floe"), cells


def compare_table(payload: CompareJson, metric: str) -> pd.DataFrame:
    """One row per (k, policy): the mean over seeds with its 95 % interval, the paired
    difference to FLoE at the same k and seed with its interval and verdict; the base model
    and the all-layer adapter first. Within a k, the best first."""
    lower = lower_is_better(metric)
    reference, diffs = _differences(payload, metric)
    rows: list[dict[str, Any]] = []
    base = payload["base"]["metrics"].get(metric)
    if base is not None:
        rows.append({"k": None, "policy": "no adapter (base model)", "mean": format_value(metric, base),
                     "95 % interval": "–", f"minus {reference}": "–", "difference 95 % interval": "–",
                     "verdict": "", "seeds": None})
    cells = [c for c in payload["cells"] if c["metric"] == metric]
    cells.sort(key=lambda c: (c["policy"] != "all", -c["k"], c["mean"] if lower else -c["mean"]))
    for c in cells:
        d = diffs.get((c["k"], c["policy"]))
        verdict = "reference" if c["policy"] == reference else \
            difference_verdict(d, lower).replace("FLoE", POLICIES.get(reference, reference).split(" (")[0]) \
            if d else ""
        rows.append({"k": c["k"], "policy": POLICIES.get(c["policy"], c["policy"]),
                     "mean": format_value(metric, c["mean"]), "95 % interval": _interval(metric, c),
                     f"minus {reference}": format_value(metric, d["mean"], True) if d else "–",
                     "difference 95 % interval": _interval(metric, d) if d else "–",
                     "verdict": verdict, "seeds": c["n"]})
    return pd.DataFrame(rows)


def compare_summary(payload: CompareJson, metric: str) -> str | None:
    """One sentence per k: the best policy and how it stands against FLoE."""
    lower = lower_is_better(metric)
    _, diffs = _differences(payload, metric)
    cells = [c for c in payload["cells"] if c["metric"] == metric and c["policy"] != "all"]
    if not cells:
        return None
    out = []
    for k in sorted({c["k"] for c in cells}, reverse=True):
        at = [c for c in cells if c["k"] == k]
        best = min(at, key=lambda c: c["mean"] if lower else -c["mean"])
        name = POLICIES.get(best["policy"], best["policy"])
        text = (f"At k = {k} the {'lowest' if lower else 'highest'} {metric}: **{name}** "
                f"({format_value(metric, best['mean'])})")
        d = diffs.get((k, best["policy"]))
        if d is not None:
            text += (f", {format_value(metric, d['mean'], True)} {_interval(metric, d)} against FLoE: "
                     f"{difference_verdict(d, lower)}")
        out.append(text + ".")
    return " ".join(out)


def fairness(payload: CompareJson) -> str | None:
    """Whether the probe's own data judged its layers: compare.json's selection, in words
    (None for a compare without policy probe)."""
    sel = payload.get("selection")
    if not sel:
        return None
    seen, n = sel.get("val_seen_by_probe"), sel.get("n_val")
    probe_seed = (sel.get("probe_data") or {}).get("seed")
    where = f"the probe `{sel.get('probe_run')}` (data seed {probe_seed})"
    if seen == 0:
        return (f"Fair: {where} had seen none of the {n} validation examples that judge it here.")
    return (f"Not fair: {where} had seen {seen} of the {n} validation examples that judge it here: it is "
            "judged partly on the data that chose its layers. Start a compare with another data seed below.")
