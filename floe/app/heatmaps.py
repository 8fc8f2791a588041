"""The Heatmaps page: layer importance per run (the paper's Fig. 3), and one layer's
head and neuron masks."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from floe.app.common import layers, run_label
from floe.pipeline.score import UNITS
from floe.store.artifacts import LayersJson
from floe.store.runs import Run

__all__ = ["HOVER", "VALUES", "heatmap_data", "heatmap_figure", "mask_figures"]

Row = Callable[[LayersJson], list[float]]
VALUES: dict[str, Row] = {
    "FLoE score s_k": lambda p: p["layer_scores"],
    "score without refinement": lambda p: p["layer_scores_without_refinement"],
    "retained head capacity": lambda p: p["components"]["head_share"],
    "retained neuron capacity": lambda p: p["components"]["neuron_share"],
    "retained share of the binary masks": lambda p: p["components"]["binary_share"]}
# What hovering a cell shows besides its value: the components of the score.
HOVER: dict[str, str] = {"head share": "head_share", "neuron share": "neuron_share",
                         "Fisher heads": "fisher_heads", "Fisher neurons": "fisher_neurons",
                         "Taylor heads": "taylor_heads", "Taylor neurons": "taylor_neurons"}
SCALE = "YlGnBu"
SORTED_NOTE = " (sorted by Fisher, largest first)"

def _row_values(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=float)


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
    row_of = VALUES[value]
    payloads = [layers(r) for r in runs]
    width = max((p["n_layers"] for p in payloads), default=0)
    z = np.full((len(runs), width), np.nan)
    custom = np.full((len(runs), width, len(HOVER) + 2), np.nan)
    for i, p in enumerate(payloads):
        row = _row_values(row_of(p))
        if normalise and np.ptp(row) > 0:
            row = (row - row.min()) / np.ptp(row)
        hover = np.stack([_row_values(p["components"][k]) for k in HOVER.values()], axis=1)
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
    with safe_open(str(run.file(UNITS)), framework="numpy") as f:
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
