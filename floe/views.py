"""What the app shows, as data: DataFrames and plotly figures built from run files.

No Streamlit here and no science: every number comes from a run's files
(docs/artifacts.md) through the core's readers; this module only selects, aligns and
draws. Readers are memoised on the run's state file, so a page rerun costs little.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import jobs
from .runs import DONE, CorruptRunError, Run, list_runs, open_run

# The policies a researcher picks from, with the ranking each reads (floe.score.POLICIES).
POLICIES = {"floe": "FLoE (with refinement)", "floe-no-refine": "FLoE without refinement",
            "random": "random (seeded)", "weight-norm": "pretrained weight norm",
            "adapter-norm": "warm-up adapter norm", "all": "all layers"}
# Heatmap values: label -> key in layers.json (dotted: inside its components).
VALUES = {"FLoE score s_k": "layer_scores",
          "score without refinement": "layer_scores_without_refinement",
          "retained head capacity": "components.head_share",
          "retained neuron capacity": "components.neuron_share",
          "retained share of the binary masks": "components.binary_share"}
# What hovering a cell shows besides its value: the components of the score.
HOVER = {"head share": "components.head_share", "neuron share": "components.neuron_share",
         "Fisher heads": "components.fisher_heads", "Fisher neurons": "components.fisher_neurons",
         "Taylor heads": "components.taylor_heads", "Taylor neurons": "components.taylor_neurons"}
SCALE = "YlGnBu"
SORTED_NOTE = " (sorted by Fisher, largest first)"


# --------------------------------------------------------------------------- run files
def _stamp(run: Run) -> int:
    """Changes whenever the run's state does (a finish, a resume, a delete)."""
    try:
        return run.file("state.json").stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _memo(fn):
    """Cache a reader per (run folder, state stamp, args): cheap reruns, fresh after changes."""
    cached = functools.lru_cache(maxsize=256)(lambda path, stamp, *a: fn(Run(Path(path)), *a))

    @functools.wraps(fn)
    def wrapper(run: Run, *args):
        return cached(str(run.path), _stamp(run), *args)
    wrapper.cache_clear = cached.cache_clear
    return wrapper


@_memo
def layers(run: Run) -> dict:
    """layers.json of a finished, intact score run (CorruptRunError otherwise)."""
    from .score import load_layers
    return load_layers(run)


@_memo
def ranking(run: Run, policy: str) -> list[int]:
    from .score import ranking_for
    return [int(k) for k in ranking_for(run, policy)]


@_memo
def run_json(run: Run, name: str) -> dict:
    """A JSON artifact of a finished, intact run."""
    run.verify()
    return run.read_json(name)


def _get(payload: dict, dotted: str):
    for part in dotted.split("."):
        payload = payload[part]
    return payload


def usable_score_runs(root: Path | None = None) -> tuple[list[Run], dict[str, CorruptRunError]]:
    """Finished score runs whose files are intact, and the problem of each one that is not."""
    good, bad = [], {}
    for run in finished("score", root):
        try:
            layers(run)
            good.append(run)
        except (CorruptRunError, FileNotFoundError, KeyError) as e:
            bad[run.id] = CorruptRunError(str(e))
    return good, bad


def training_preset(score_run: Run) -> dict[str, str]:
    """Training defaults taken from the analysis: the same sample sizes and batch size."""
    warm = score_run.config["warmup"]
    return {"max_samples": str(warm["data"]["max_samples"]), "val_samples": str(warm["data"]["val_samples"]),
            "max_length": str(warm["data"]["max_length"]), "batch_size": str(warm["train"]["batch_size"])}


def finished(kind: str, root: Path | None = None) -> list[Run]:
    """Finished runs of one kind, newest first."""
    return [r for r in list_runs(root) if r.kind == kind and r.status == DONE]


# --------------------------------------------------------------------------- run table
def short_name(spec) -> str:
    spec = spec.get("model", "") if isinstance(spec, dict) else str(spec or "")
    return Path(spec).name if os.path.isabs(spec) else spec


def describe(run: Run) -> dict:
    """Model, data, ratio, budget and detail of any run kind, from its config."""
    try:
        cfg = run.config
    except CorruptRunError:
        return {"model": "?", "data": "?", "ratio": None, "budget": None, "detail": "corrupt config"}
    base = cfg.get("warmup", cfg)  # score runs nest their warm-up's config
    data = base.get("data") or {}
    ratios = cfg.get("ratios")
    return {"model": short_name(base.get("model")), "data": short_name(data.get("data")),
            "ratio": None if ratios else data.get("ratio"),
            "budget": (cfg.get("score") or {}).get("beta"), "detail": _detail(run.kind, cfg)}


def _detail(kind: str, cfg: dict) -> str:
    """What sets a run apart from others of its kind (ratios, layer choice, rank range)."""
    sel = cfg.get("selection") or {}
    try:
        if kind == "study":
            return "ratios " + " / ".join(f"{r:g}" for r in cfg["ratios"])
        if kind == "train":
            return f"{sel['policy']} top-{sel['k']}, r {cfg['adapter']['r']}"
        if kind == "ranksearch":
            return f"{sel['policy']} top-{sel['k']}, r in [{cfg['search']['r_min']}, {cfg['search']['r_max']}]"
        if kind == "eval":
            return ", ".join(cfg["eval"]["tasks"])
        if kind == "compare":
            return "k " + ", ".join(map(str, cfg["compare"]["ks"]))
    except (KeyError, TypeError):
        pass
    return ""


def _when(state: dict) -> str:
    t = state.get("finished") or state.get("started") or state.get("updated")
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: what it is, its status and when."""
    rows = []
    for run in runs:
        state = _safe_state(run)
        rows.append({"run": run.id, "kind": run.kind, **describe(run),
                     "status": run.status if state else "corrupt", "date": _when(state or {}),
                     "error": (state or {}).get("error") or ""})
    columns = ["run", "kind", "model", "data", "ratio", "budget", "detail", "status", "date", "error"]
    return pd.DataFrame(rows, columns=columns)


def _safe_state(run: Run) -> dict | None:
    try:
        return run.state
    except CorruptRunError:
        return None


def run_label(run: Run) -> str:
    """A short unique name for a run in pickers and heatmap rows."""
    d = describe(run)
    ratio = f" · {d['ratio']:.0%}" if d["ratio"] is not None else ""
    beta = f" · β {d['budget']:g}" if d["budget"] is not None else ""
    detail = f" · {d['detail']}" if d["detail"] else ""
    return f"{d['model']} · {d['data']}{ratio}{beta}{detail} · {run.id.split('-', 1)[1][:6]}"


# --------------------------------------------------------------------------- progress
def _eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def format_record(record: dict) -> str:
    """One progress record as a log line."""
    when = time.strftime("%H:%M:%S", time.localtime(record.get("time", 0)))
    stage, event = record.get("stage", ""), record.get("event")
    if event == "step":
        text = f"step {record['step']}/{record['total_steps']}  loss {record.get('loss', float('nan')):.4f}"
    elif event == "progress":
        text = f"{record.get('done')}/{record.get('total') or '?'}"
    elif event == "start":
        resumed = record.get("resumed_from") or 0
        text = f"start, {record.get('total_steps')} steps" + (f" (resumed at {resumed})" if resumed else "")
    else:
        text = record.get("message", event or "")
    return f"{when}  {stage}: {text}"


def progress_of(records: list[dict]) -> dict:
    """The latest state of a progress log: fraction done (None if unknown), text, ETA."""
    if not records:
        return {"fraction": None, "text": "starting", "eta": ""}
    last = records[-1]
    stage = last.get("stage", "")
    if last.get("event") == "step":
        return {"fraction": min(1.0, last["step"] / max(1, last["total_steps"])),
                "text": f"{stage}: step {last['step']} of {last['total_steps']}, loss {last['loss']:.3f}",
                "eta": _eta(last.get("eta"))}
    if last.get("event") == "progress" and last.get("total"):
        done, total = last["done"], last["total"]
        began = next((r["time"] for r in reversed(records) if r.get("stage") == stage
                      and r.get("event") == "stage"), records[0].get("time"))
        rate = (last["time"] - began) / max(done, 1)
        return {"fraction": min(1.0, done / total), "text": f"{stage}: {done} of {total}",
                "eta": _eta(rate * (total - done)) if done else ""}
    return {"fraction": None, "text": format_record(last).split("  ", 1)[1], "eta": ""}


def job_view(job: dict, root: Path | None = None) -> dict:
    """What the job panel shows: status, progress, ETA, last lines, error, result run."""
    view = {"id": job["id"], "label": job["label"], "status": job["status"],
            "command": jobs.display_command(job["args"]) if job.get("args") else " ".join(job["command"]),
            "fraction": None, "text": "", "eta": "", "lines": [], "error": job.get("error"),
            "run": (job.get("result") or {}).get("run"), "devices": ", ".join(job.get("devices", [])),
            "command_name": (job.get("args") or [""])[0]}
    if job["status"] == jobs.QUEUED:
        view["text"] = "waiting for the device"
    elif job["status"] == jobs.RUNNING:
        held = jobs.held_runs(job, root)
        if held:
            records = held[0].progress()
            view.update(progress_of(records), current_run=held[0].id)
            view["lines"] = [format_record(r) for r in records[-4:]]
        else:
            view["text"] = "loading the model and data"
        view["lines"] += jobs.log_tail(job, root, 3)
    elif job["status"] == jobs.DONE:
        view.update(fraction=1.0, text="finished")
    return view


# --------------------------------------------------------------------------- heatmaps
def _row_values(payload: dict, key: str) -> np.ndarray:
    return np.asarray(_get(payload, key), dtype=float)


def _cell_layer(n_layers: int, width: int, column: int, align: str) -> int | None:
    """The layer of a run drawn in ``column``: by index, or at the same relative depth."""
    if align == "index":
        return column if column < n_layers else None
    return min(n_layers - 1, int((column + 0.5) / width * n_layers))


def _x(position: float, n: int, align: str) -> float:
    """Where a layer (or column) ``position`` of ``n`` sits on the x axis."""
    return position if align == "index" else (position + 0.5) / n


def heatmap_data(runs: list[Run], value: str = "FLoE score s_k", align: str = "index",
                 normalise: bool = False) -> dict:
    """The matrix behind the saliency heatmap: rows = runs, columns = layers (or relative
    depth bins of the deepest run), hover data per cell, and each run's ranking."""
    key = VALUES[value]
    payloads = [layers(r) for r in runs]
    width = max((p["n_layers"] for p in payloads), default=0)
    z = np.full((len(runs), width), np.nan)
    custom = np.full((len(runs), width, len(HOVER) + 2), np.nan)
    for i, p in enumerate(payloads):
        row = _row_values(p, key)
        if normalise and np.ptp(row) > 0:
            row = (row - row.min()) / np.ptp(row)
        hover = np.stack([_row_values(p, k) for k in HOVER.values()], axis=1)
        ranks = np.empty(p["n_layers"])
        ranks[p["ranking"]] = np.arange(1, p["n_layers"] + 1)
        for c in range(width):
            k = _cell_layer(p["n_layers"], width, c, align)
            if k is not None:
                z[i, c] = row[k]
                custom[i, c] = [k, ranks[k], *hover[k]]
    return {"z": z, "custom": custom, "rows": [run_label(r) for r in runs], "width": width,
            "n_layers": [p["n_layers"] for p in payloads],
            "rankings": [p["ranking"] for p in payloads]}


def heatmap_figure(runs: list[Run], value: str = "FLoE score s_k", align: str = "index",
                   k: int = 5, normalise: bool = False,
                   marked: list[list[int]] | None = None) -> go.Figure:
    """Layer-importance heatmap with dots on each run's top-k layers (the paper's Fig. 3).

    ``marked`` replaces the top-k dots by explicit layer lists (one per run).
    """
    d = heatmap_data(runs, value, align, normalise)
    x = [_x(c, d["width"], align) for c in range(d["width"])]
    hover = "<b>%{y}</b><br>layer %{customdata[0]:.0f} (rank %{customdata[1]:.0f})<br>" + \
        f"{value}: " + "%{z:.3f}<br>" + "<br>".join(
            f"{name}: %{{customdata[{i}]:.4g}}" for i, name in enumerate(HOVER, 2)) + "<extra></extra>"
    fig = go.Figure(go.Heatmap(z=d["z"], x=x, y=d["rows"], customdata=d["custom"],
                               colorscale=SCALE, hovertemplate=hover, xgap=1, ygap=1,
                               colorbar={"title": {"text": "normalised" if normalise else value,
                                                   "side": "right"}}))
    dots = marked if marked is not None else [r[:k] for r in d["rankings"]]
    xs, ys, texts = [], [], []
    for row, (chosen, n) in enumerate(zip(dots, d["n_layers"])):
        for layer in chosen:
            xs.append(_x(layer, n, align))
            ys.append(d["rows"][row])
            texts.append(f"layer {layer}")
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", text=texts, name="chosen" if marked
                             is not None else f"top-{k}", hovertemplate="%{text}<extra></extra>",
                             marker={"color": "black", "size": 9, "line": {"color": "white", "width": 1.5}}))
    fig.update_layout(
        height=140 + 36 * len(runs), margin={"l": 10, "r": 10, "t": 30, "b": 40},
        xaxis_title="layer" if align == "index" else "relative depth (0 = first layer, 1 = last)",
        yaxis={"autorange": "reversed"}, showlegend=False, plot_bgcolor="white")
    if align == "index":
        fig.update_xaxes(dtick=1 if d["width"] <= 32 else 4, range=[-0.5, d["width"] - 0.5])
    else:
        fig.update_xaxes(range=[0, 1])
    return fig


def _units(run: Run, names: list[str], layer: int) -> dict[str, np.ndarray]:
    """One layer's slice of unit tensors, read without loading the whole file."""
    from safetensors import safe_open
    run.verify()
    with safe_open(str(run.file("units.safetensors")), framework="numpy") as f:
        return {n: np.asarray(f.get_slice(n)[layer]) for n in names if n in f.keys()}


def mask_figures(run: Run, layer: int, sort: bool = True) -> tuple[go.Figure, go.Figure, pd.DataFrame]:
    """Head and neuron masks of one layer (greedy, refined, tuned values per unit) and their
    counts. Units are sorted by Fisher value, largest first, so that what the masks keep
    lines up: the left of each strip is what the adapted model needs most."""
    kinds = ("greedy", "refined", "tuned", "tau", "cost")
    figures, stats = [], []
    for unit in ("heads", "neurons"):
        read = _units(run, [f"{k}_{unit}" for k in kinds], layer)
        t = {k: read[f"{k}_{unit}"] for k in kinds}
        figures.append(_mask_figure(t, unit, layer, sort))
        stats.append({"units": unit, "count": len(t["tau"]), "kept (greedy)": int(t["greedy"].sum()),
                      "kept (refined)": int(t["refined"].sum()),
                      "mean tuned value": float(np.clip(t["tuned"], 0, 1).mean()),
                      "Fisher sum": float(t["tau"].sum()), "Taylor cost sum": float(t["cost"].sum())})
    return figures[0], figures[1], pd.DataFrame(stats)


def _mask_figure(t: dict[str, np.ndarray], unit: str, layer: int, sort: bool) -> go.Figure:
    order = np.argsort(-t["tau"], kind="stable") if sort else np.arange(len(t["tau"]))
    rows = ["greedy", "refined", "tuned"]
    z = np.stack([t[r][order] for r in rows])
    custom = np.stack([np.broadcast_to(v, z.shape) for v in (order, t["tau"][order], t["cost"][order])], axis=-1)
    name = unit[:-1]
    fig = go.Figure(go.Heatmap(
        z=z, y=rows, customdata=custom, colorscale=SCALE, zmin=0, zmax=1, xgap=1 if unit == "heads" else 0,
        hovertemplate=f"{name} " + "%{customdata[0]:.0f}<br>%{y} mask: %{z:.3f}<br>"
        "Fisher: %{customdata[1]:.4g}<br>Taylor cost: %{customdata[2]:.4g}<extra></extra>",
        colorbar={"title": {"text": "mask", "side": "right"}}))
    fig.update_layout(height=200, margin={"l": 10, "r": 10, "t": 30, "b": 40},
                      title=f"{unit} of layer {layer}{SORTED_NOTE if sort else ''}",
                      xaxis_title=f"{name} (rank by Fisher)" if sort else name)
    return fig


# --------------------------------------------------------------------------- stability
def ranks_of(order: list[int]) -> list[int]:
    from .score import ranks_of as core_ranks_of
    return core_ranks_of(order)


def _ratio_key(run: Run) -> str | None:
    """Score runs that differ only in the data ratio share this key."""
    cfg = json.loads(json.dumps(run.config))
    try:
        cfg["warmup"]["data"].pop("ratio")
    except KeyError:
        return None
    for drop in ("warmup_run", "kind"):
        cfg.pop(drop, None)
    return json.dumps(cfg, sort_keys=True)


def stability_sources(root: Path | None = None) -> dict[str, dict]:
    """label -> stability payload (stability.json's shape): finished study runs, and groups
    of finished score runs that differ only in their data ratio."""
    sources = {}
    for study in finished("study", root):
        with _skip_corrupt():
            sources[f"study · {run_label(study)}"] = run_json(study, "stability.json")
    groups: dict[str, dict[float, Run]] = {}
    for run in finished("score", root):
        key = _ratio_key(run)
        if key is not None:
            groups.setdefault(key, {}).setdefault(describe(run)["ratio"], run)
    for group in groups.values():
        if len(group) < 2:
            continue
        with _skip_corrupt():
            ratios = sorted(group, reverse=True)
            payload = {"ratios": ratios, "score_runs": {str(r): group[r].id for r in ratios},
                       "ranks": {str(r): ranks_of(layers(group[r])["ranking"]) for r in ratios},
                       "ranks_without_refinement": {
                           str(r): ranks_of(layers(group[r])["ranking_without_refinement"]) for r in ratios}}
            first = group[ratios[0]]
            label = f"score runs · {run_label(first).rsplit(' · ', 1)[0]} · ratios " + \
                " / ".join(f"{r:g}" for r in ratios)
            sources.setdefault(label, payload)
    return sources


class _skip_corrupt:
    """Leave out a source whose files are damaged (the Runs page shows those)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, (CorruptRunError, FileNotFoundError, KeyError))


def _ranks_frame(payload: dict, key: str) -> pd.DataFrame:
    """Layers x ratios (largest ratio first) of one variant's ranks."""
    ranks = pd.DataFrame(payload[key])
    return ranks[sorted(ranks.columns, key=float, reverse=True)]


def stability_table(payload: dict) -> pd.DataFrame:
    """Per layer: its rank at each ratio and the min-max spread, with and without refinement."""
    frames = []
    for variant, key in (("with refinement", "ranks"), ("without refinement", "ranks_without_refinement")):
        ranks = _ranks_frame(payload, key).rename(columns=lambda r: f"{float(r):.0%}")
        ranks.index.name = "layer"
        ranks["min"], ranks["max"] = ranks.min(axis=1), ranks.max(axis=1)
        ranks["spread"] = ranks["max"] - ranks["min"]
        frames.append(pd.concat({variant: ranks}, axis=1))
    return pd.concat(frames, axis=1)


def stability_summary(payload: dict) -> pd.DataFrame:
    """Mean spread and the smallest rank correlation between two ratios, per variant."""
    rows = []
    for variant, key in (("with refinement", "ranks"), ("without refinement", "ranks_without_refinement")):
        ranks = _ranks_frame(payload, key)
        corr = ranks.corr(method="spearman").to_numpy()
        off = corr[~np.eye(len(corr), dtype=bool)]
        rows.append({"variant": variant, "mean rank spread": float((ranks.max(1) - ranks.min(1)).mean()),
                     "max rank spread": int((ranks.max(1) - ranks.min(1)).max()),
                     "lowest Spearman between ratios": float(off.min()) if off.size else 1.0})
    return pd.DataFrame(rows)


def stability_figure(payload: dict) -> go.Figure:
    """Each layer's rank at each data ratio, a min-max band, with and without refinement
    side by side (the paper's Fig. 7)."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("with refinement", "without refinement"))
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for col, key in ((1, "ranks"), (2, "ranks_without_refinement")):
        ranks = _ranks_frame(payload, key)
        x = list(ranks.index)
        fig.add_trace(go.Scatter(x=x + x[::-1], y=list(ranks.max(1)) + list(ranks.min(1))[::-1],
                                 fill="toself", fillcolor="rgba(120,120,120,0.18)", line={"width": 0},
                                 hoverinfo="skip", name="min-max", showlegend=col == 1), row=1, col=col)
        for i, ratio in enumerate(ranks.columns):
            fig.add_trace(go.Scatter(x=x, y=ranks[ratio], mode="lines+markers",
                                     name=f"{float(ratio):.0%} data", legendgroup=ratio,
                                     showlegend=col == 1, line={"color": colours[i % len(colours)]},
                                     hovertemplate="layer %{x}: rank %{y}<extra>" + f"{float(ratio):.0%}</extra>"),
                          row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col, dtick=2 if len(x) > 16 else 1,
                         range=[-0.5, len(x) - 0.5])
    fig.update_yaxes(title_text="rank (1 = most important)", row=1, col=1)
    fig.update_layout(height=420, margin={"l": 10, "r": 10, "t": 40, "b": 40},
                      legend={"orientation": "h", "y": -0.2}, plot_bgcolor="white")
    fig.update_xaxes(showgrid=True, gridcolor="#eee")
    fig.update_yaxes(showgrid=True, gridcolor="#eee")
    return fig


# --------------------------------------------------------------------------- refinement
def differing_ks(with_refinement: list[int], without: list[int]) -> list[int]:
    """The k whose top-k layer sets differ between two rankings: only these need an
    evaluation to compare the rankings (the paper's Fig. 6 / Table 7)."""
    return [k for k in range(1, len(with_refinement) + 1)
            if set(with_refinement[:k]) != set(without[:k])]


def refinement_moves(payload: dict) -> pd.DataFrame:
    """Per layer: rank without and with refinement, and how far it moved (+ = up)."""
    before = ranks_of(payload["ranking_without_refinement"])
    after = ranks_of(payload["ranking"])
    df = pd.DataFrame({"layer": range(payload["n_layers"]), "rank without refinement": before,
                       "rank with refinement": after})
    df["moved up by"] = df["rank without refinement"] - df["rank with refinement"]
    df["score without"] = payload["layer_scores_without_refinement"]
    df["score with"] = payload["layer_scores"]
    return df.sort_values("rank with refinement").reset_index(drop=True)


def refinement_figure(payload: dict) -> go.Figure:
    """Both rankings as columns, a line per layer from its rank without refinement to its
    rank with it; layers that move are coloured (the paper's Fig. 6)."""
    moves = refinement_moves(payload)
    fig = go.Figure()
    for layer, before, after, up in zip(moves["layer"], moves["rank without refinement"],
                                        moves["rank with refinement"], moves["moved up by"]):
        colour = "#2ca02c" if up > 0 else "#d62728" if up < 0 else "#c7c7c7"
        fig.add_trace(go.Scatter(
            x=["without refinement", "with refinement"], y=[before, after],
            mode="lines+markers+text", text=[f"L{layer}", f"L{layer}"],
            textposition=["middle left", "middle right"], line={"color": colour, "width": 3 if up else 1},
            marker={"size": 7, "color": colour}, showlegend=False,
            hovertemplate=f"layer {layer}: rank %{{y}}<extra>%{{x}}</extra>"))
    fig.update_layout(height=max(360, 18 * payload["n_layers"] + 80),
                      margin={"l": 60, "r": 60, "t": 30, "b": 30}, plot_bgcolor="white",
                      yaxis={"range": [payload["n_layers"] + 0.5, 0.5], "title": "rank (1 = most important)",
                             "dtick": 1 if payload["n_layers"] <= 40 else 4})
    return fig


def compare_runs(score_run: Run, root: Path | None = None) -> list[Run]:
    """Finished ``floe compare`` runs made from this score run, newest first."""
    out = []
    for run in finished("compare", root):
        with _skip_corrupt():
            if run.config.get("score_run") == score_run.id:
                out.append(run)
    return out


def compare_table(run: Run, metric: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One metric of a compare run as a table: rows k, columns policies, cells
    "mean ± CI half-width" over seeds (the paper's Tables 2 and 7). Returns (table, metrics)."""
    payload = run_json(run, "compare.json")
    metrics = payload["metrics"]
    metric = metric if metric in metrics else metrics[0]
    cells = [c for c in payload["cells"] if c["metric"] == metric]

    def cell(c):
        hw = c.get("half_width")
        return f"{c['mean']:.4f}" + (f" ± {hw:.4f}" if hw is not None else "")
    table = pd.DataFrame([{"k": c["k"], "policy": c["policy"], "value": cell(c)} for c in cells])
    if table.empty:
        return table, metrics
    table = table.pivot(index="k", columns="policy", values="value").sort_index(ascending=False)
    return table, metrics


# --------------------------------------------------------------------------- rank search
def rank_searches(root: Path | None = None) -> list[Run]:
    """Rank-search runs of any status (a running one shows its trials so far)."""
    return [r for r in list_runs(root) if r.kind == "ranksearch"]


def search_summary(run: Run) -> dict | None:
    """search.json of a finished search; for one in progress, the same summary read live
    from its Optuna study (floe.ranksearch.summarize). None before the first trial."""
    if run.status == DONE:
        return run_json(run, "search.json")
    db = run.file("study.db")
    if db.exists():
        import optuna
        from .ranksearch import summarize
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = f"sqlite:///{db}"
        names = optuna.get_all_study_names(url)
        if names:
            return summarize(optuna.load_study(study_name=names[0], storage=url), url)
    return run.read_json("search.json") if run.file("search.json").exists() else None


TRIAL_COLUMNS = ["number", "state", "r", "value", "trainable_parameters", "train_seconds", "train_run"]


def search_trials(run: Run) -> tuple[pd.DataFrame, dict] | tuple[None, None]:
    """The trials of a rank search as a table, and its summary (best r, counts)."""
    summary = search_summary(run)
    if not summary or not summary.get("trials"):
        return None, None
    df = pd.DataFrame([{k: t.get(k) for k in TRIAL_COLUMNS} for t in summary["trials"]], columns=TRIAL_COLUMNS)
    return df, summary


def search_figures(trials: pd.DataFrame, best_r: int | None) -> tuple[go.Figure, go.Figure]:
    """Optimisation history (loss per trial, best so far) and the slice of loss against r."""
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    history = go.Figure()
    history.add_trace(go.Scatter(x=done["number"], y=done["value"], mode="markers", name="trial",
                                 customdata=done["r"], marker={"size": 9},
                                 hovertemplate="trial %{x}: r=%{customdata}, loss %{y:.4f}<extra></extra>"))
    history.add_trace(go.Scatter(x=done["number"], y=done["value"].cummin(), mode="lines",
                                 name="best so far", line={"shape": "hv"}))
    pruned = trials[trials["state"] == "PRUNED"]
    if len(pruned):
        history.add_trace(go.Scatter(x=pruned["number"], y=[done["value"].max()] * len(pruned)
                                     if len(done) else [0] * len(pruned), mode="markers",
                                     name="pruned", marker={"symbol": "x", "color": "#999"},
                                     customdata=pruned["r"], hovertemplate="trial %{x}: r=%{customdata}, "
                                     "pruned<extra></extra>"))
    history.update_layout(height=330, margin={"l": 10, "r": 10, "t": 30, "b": 40},
                          xaxis_title="trial", yaxis_title="validation loss", title="optimisation history",
                          legend={"orientation": "h", "y": -0.25})
    sl = go.Figure(go.Scatter(x=done["r"], y=done["value"], mode="markers", customdata=done["number"],
                              marker={"size": 10, "color": done["number"], "colorscale": "Viridis",
                                      "showscale": True, "colorbar": {"title": {"text": "trial"}}},
                              hovertemplate="r=%{x}: loss %{y:.4f} (trial %{customdata})<extra></extra>"))
    if best_r is not None and len(done):
        sl.add_vline(x=best_r, line_dash="dash", line_color="#d62728",
                     annotation_text=f"best r = {best_r}")
    sl.update_layout(height=330, margin={"l": 10, "r": 10, "t": 30, "b": 40},
                     xaxis_title="rank r", yaxis_title="validation loss", title="slice: loss against r")
    return history, sl


# --------------------------------------------------------------------------- train & export
def chosen_layers(run: Run, policy: str, k: int) -> list[int]:
    """The layers a policy adapts: the top-k of its ranking, sorted (all layers for 'all')."""
    order = ranking(run, policy)
    return sorted(order if policy == "all" else order[:k])


def _adapter_file(score_run: Run) -> Path:
    warm = open_run(score_run.config["warmup_run"], score_run.path.parent.parent)
    return warm.file("adapter/adapter_model.safetensors")


@_memo
def adapter_parameters(score_run: Run) -> tuple[dict[int, int], dict[int, int], int]:
    """Per layer, the warm-up adapter's rank-proportional (A, B) and fixed (router) counts,
    and its rank: from the safetensors header, nothing loaded."""
    from safetensors import safe_open
    per_rank, fixed = {}, {}
    with safe_open(str(_adapter_file(score_run)), framework="numpy") as f:
        for name in f.keys():
            m = re.search(r"layers\.(\d+)\.", name)
            if not m:
                continue
            k, n = int(m.group(1)), int(np.prod(f.get_slice(name).get_shape()))
            bucket = fixed if "lora_router" in name else per_rank
            bucket[k] = bucket.get(k, 0) + n
    return per_rank, fixed, int(score_run.config["warmup"]["adapter"]["r"])


def trainable_parameters(score_run: Run, chosen: list[int], r: int | None = None) -> int:
    """Trainable parameters of HydraLoRA on ``chosen`` layers at rank ``r`` (default: the
    warm-up's), exact: A and B scale with r, the router does not."""
    per_rank, fixed, r0 = adapter_parameters(score_run)
    scale = (r or r0) / r0
    return int(sum(per_rank.get(k, 0) * scale + fixed.get(k, 0) for k in chosen))


@functools.lru_cache(maxsize=16)
def model_facts(model: str) -> dict:
    """Depth, widths and parameter count of a model folder (config.json and the
    safetensors headers), for the memory estimate. Empty when the folder is not here."""
    from .models import EMBEDDED
    from .runs import cache_root
    folder = cache_root() / "models" / model if model in EMBEDDED else Path(model)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return {}
    cfg = json.loads(cfg_path.read_text())
    cfg = cfg.get("text_config", cfg)
    from safetensors import safe_open
    params = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="numpy") as f:
            params += sum(int(np.prod(f.get_slice(n).get_shape())) for n in f.keys())
    return {"hidden": cfg["hidden_size"], "intermediate": cfg["intermediate_size"],
            "n_layers": cfg["num_hidden_layers"], "vocab": cfg["vocab_size"], "parameters": params}


def memory_estimate(score_run: Run, chosen: list[int], trainable: int, cuda: bool) -> dict | None:
    """A rough training-memory estimate in GiB, with its parts (None without the model here).

    Weights (bf16 on CUDA, fp32 on CPU); 16 bytes per trainable parameter (fp32 weight,
    gradient, two Adam moments); activations kept for backward from the lowest adapted
    layer upwards (backward stops there), ~(10 hidden + 3 FFN) values per token and layer;
    the logits and their gradient. Measured peaks appear in train.json after training.
    """
    warm = score_run.config["warmup"]  # model, batch and length as in the analysis
    facts = model_facts(warm["model"]["model"])
    if not facts or not chosen:
        return None
    width = 2 if cuda else 4
    tokens = warm["train"]["batch_size"] * warm["data"]["max_length"]
    depth = facts["n_layers"] - min(chosen)
    parts = {"weights": facts["parameters"] * width, "adapter + optimizer": trainable * 16,
             "activations": depth * tokens * (10 * facts["hidden"] + 3 * facts["intermediate"]) * width,
             "logits": 2 * tokens * facts["vocab"] * 4}
    gib = {k: v / 2 ** 30 for k, v in parts.items()}
    return {"total": sum(gib.values()), **gib}


def train_runs_for(score_run: Run, policy: str, k: int, root: Path | None = None) -> list[Run]:
    """Training runs (any status) that adapt this score run's policy top-k, newest first."""
    out = []
    for run in list_runs(root):
        if run.kind != "train":
            continue
        with _skip_corrupt():
            sel = run.config.get("selection") or {}
            if sel.get("score_run") == score_run.id and sel.get("policy") == policy and \
                    (policy == "all" or sel.get("k") == k):
                out.append(run)
    return out


def loss_curve(run: Run) -> go.Figure:
    """Training loss per step from a run's progress log (live while it trains)."""
    steps = [r for r in run.progress() if r.get("event") == "step"]
    fig = go.Figure(go.Scatter(x=[r["step"] for r in steps], y=[r["loss"] for r in steps],
                               mode="lines+markers" if len(steps) < 60 else "lines", name="loss"))
    if steps:
        fig.update_xaxes(range=[0, steps[-1]["total_steps"] + 0.5])
    fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 30, "b": 40},
                      xaxis_title="step", yaxis_title="training loss")
    return fig


def train_summary(run: Run) -> pd.DataFrame:
    """The headline of a finished training run (its train.json)."""
    t = run_json(run, "train.json")
    peak = t.get("peak_memory_bytes")
    return pd.DataFrame([{"layers": ", ".join(map(str, t.get("layers", []))), "r": t.get("r"),
                          "steps": t.get("steps"), "val loss before": t.get("val_loss_before"),
                          "val loss after": t.get("val_loss_after"),
                          "trainable parameters": t.get("trainable_parameters"),
                          "peak memory (GiB)": peak / 2 ** 30 if peak else None,
                          "seconds": t.get("seconds"), "device": t.get("device")}])


def eval_runs_for(train_run: Run, root: Path | None = None) -> list[Run]:
    out = []
    for run in finished("eval", root):
        with _skip_corrupt():
            if (run.config.get("adapter") or {}).get("train_run") == train_run.id:
                out.append(run)
    return out


def eval_table(runs: list[Run]) -> pd.DataFrame:
    """Headline metrics of eval runs, one row each."""
    from .evaluate import headline
    rows = []
    for run in runs:
        with _skip_corrupt():
            rows.append({"run": run.id, **headline(run_json(run, "eval.json"))})
    return pd.DataFrame(rows)


def selection_file(score_run: Run, policy: str, k: int) -> bytes:
    """The layer list of a choice, as JSON: what to adapt, and the ranking it came from."""
    chosen = chosen_layers(score_run, policy, k)
    return json.dumps({"model": score_run.config["warmup"]["model"]["model"], "score_run": score_run.id,
                       "policy": policy, "k": len(chosen), "layers": chosen,
                       "ranking": ranking(score_run, policy)}, indent=2).encode()


def export_folder(train_run: Run) -> Path:
    """``floe export`` of a finished train run into cache/exports/<run id> (made once)."""
    from .export import MARKER, export
    target = train_run.path.parent.parent / "exports" / train_run.id
    if not (target / MARKER).is_file():
        export(train_run.id, target, force=True)
    return target


def export_downloads(folder: Path) -> dict[str, bytes]:
    """The export's files as downloads: config.yaml, the peft config, the adapter, and
    the whole folder as one zip."""
    return {"config.yaml": (folder / "config.yaml").read_bytes(),
            "peft_adapter_config.json": (folder / "peft" / "adapter_config.json").read_bytes(),
            "adapter.zip": _zip_folder(folder / "adapter", "adapter"),
            f"{folder.name}.zip": _zip_folder(folder, folder.name)}


def _zip_folder(folder: Path, prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, f"{prefix}/{path.relative_to(folder)}")
    return buf.getvalue()


# --------------------------------------------------------------------------- CLI options
@functools.lru_cache(maxsize=16)
def cli_options(command: str, skip: tuple[str, ...] = ("model", "data", "json", "quiet", "out")) -> list[dict]:
    """The options of ``floe <command>``, read from the CLI's own parser (so the app's forms
    follow the CLI): flag, dest, kind, default (as a user would type it), help, choices."""
    import argparse
    from .cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    return [_option(action, group.title) for group in parser._action_groups
            for action in group._group_actions
            if action.option_strings and action.dest not in skip + ("help",)]


def _option(action, group: str) -> dict:
    """One argparse action as a form field. Config options default to SUPPRESS and carry
    their default in the help text (floe.config.add_arguments): read it from there."""
    import argparse
    import ast
    match = re.search(r"\(default: (.*?)\)(;[^()]*)?$", action.help or "")
    default = match.group(1) if match else action.default
    negatable = isinstance(action, argparse.BooleanOptionalAction)
    if negatable or isinstance(action, argparse._StoreTrueAction):
        kind, default = "bool", str(default) == "True"
    else:
        kind = "choice" if action.choices else "text"
        if default in (None, "None", argparse.SUPPRESS):
            default = ""
        elif isinstance(default, str) and default.startswith("["):
            default = ",".join(str(x) for x in ast.literal_eval(default))
        default = str(default)
    return {"flag": action.option_strings[0], "dest": action.dest, "kind": kind, "default": default,
            "choices": list(action.choices or []), "group": group, "type": action.type,
            "help": re.sub(r"\s*\(default: .*?\)", "", action.help or ""),
            "no_flag": action.option_strings[1] if negatable else None}


def cli_args(options: list[dict], values: dict) -> list[str]:
    """The arguments for the values that differ from the defaults; raises ValueError with
    the option's name for a value the CLI would reject."""
    args = []
    for opt in options:
        value = values.get(opt["dest"], opt["default"])
        if value == opt["default"] or (opt["kind"] == "text" and str(value).strip() == ""):
            continue
        if opt["kind"] == "bool":
            args.append(opt["flag"] if value else opt["no_flag"] or "")
            continue
        value = str(value).strip()
        if opt["type"] is not None:
            try:
                opt["type"](value)
            except Exception as e:  # argparse type callables raise several types
                raise ValueError(f"{opt['flag']}: {value!r} is not valid ({e})") from None
        args += [opt["flag"], value]
    return [a for a in args if a]


# --------------------------------------------------------------------------- model and data pickers
MAX_UPLOAD_MB = 50
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def embedded_models() -> dict[str, str]:
    """Embedded model name -> description (with a note when its package is missing)."""
    from .models import EMBEDDED, embedded_available
    have = embedded_available()
    return {name: m.description + ("" if have[name] else f" (needs {m.package.replace('_', '-')})")
            for name, m in EMBEDDED.items()}


def embedded_sets() -> dict[str, str]:
    from .data import EMBEDDED_SETS
    return {name: description for name, (_, description) in EMBEDDED_SETS.items()}


def hub_available() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0", "false", "False")


def check_model_folder(path: str) -> str:
    """A usable local model folder: its architecture and depth, or ValueError saying why not."""
    from transformers import AutoConfig
    from .arch import shape_of, spec_for
    from .models import ModelNotFoundError, resolve_model_path
    if not path.strip():
        raise ValueError("type the path of a model folder (one with config.json)")
    try:
        folder = resolve_model_path(str(Path(path).expanduser()))
        config = AutoConfig.from_pretrained(folder)
        spec_for(config)
    except (ModelNotFoundError, OSError, ValueError) as e:
        raise ValueError(str(e)) from None
    return f"{config.model_type}, {shape_of(config).n_layers} layers"


def check_hub_id(text: str) -> str:
    if not HUB_ID.match(text.strip()):
        raise ValueError("a hub id looks like owner/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    return text.strip()


def upload_path(name: str, data: bytes, root: Path | None = None) -> Path:
    """Where an uploaded file is kept: cache/uploads/<content hash>-<sanitised name>."""
    import hashlib
    from .data import FILE_TYPES
    from .runs import cache_root, safe_name
    base = Path(name).name
    suffix = Path(base).suffix.lower()
    if suffix not in FILE_TYPES:
        raise ValueError(f"{base}: unsupported file type; use {', '.join(FILE_TYPES)}")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(base).stem).strip("._-")[:60] or "data"
    digest = hashlib.sha256(data).hexdigest()[:12]
    return (root or cache_root()) / "uploads" / safe_name(f"{digest}-{stem}{suffix}")


def save_upload(name: str, data: bytes, root: Path | None = None) -> Path:
    """Size-check and store an uploaded data file (same content, same path)."""
    from .runs import atomic_write_bytes
    if len(data) > MAX_UPLOAD_MB * 2 ** 20:
        raise ValueError(f"{Path(name).name} is {len(data) / 2 ** 20:.0f} MB; the limit is {MAX_UPLOAD_MB} MB")
    path = upload_path(name, data, root)
    if not path.exists():
        atomic_write_bytes(path, data)
    return path


@functools.lru_cache(maxsize=32)
def _examples(path: str, stamp: int) -> tuple[int, pd.DataFrame]:
    from .data import load_file_examples
    examples = load_file_examples(path)
    preview = pd.DataFrame([{"prompt": " / ".join(m["content"] for m in ex["messages"])[:300],
                             "response": ex["response"][:300]} for ex in examples[:5]])
    return len(examples), preview


def check_data_file(path: str) -> tuple[int, pd.DataFrame]:
    """(number of usable examples, a preview) of a data file, or floe.data.DataError."""
    p = Path(path).expanduser()
    if not p.is_file():
        from .data import DataError
        raise DataError(f"data file {p} does not exist")
    return _examples(str(p.resolve()), p.stat().st_mtime_ns)
