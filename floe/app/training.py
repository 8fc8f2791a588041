"""The Train & export page: the layers a policy chooses, their cost (parameters, an
expected memory), training runs, evaluations and the export's downloads."""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from floe.app.common import finished, memo_by_state, ranking, run_json, skip_corrupt
from floe.eval.evaluate import SUMMARY as EVAL
from floe.eval.evaluate import headline
from floe.pipeline.data import DataConfig
from floe.pipeline.policies import MEASURED, selected_layers
from floe.pipeline.sparse import SUMMARY as TRAIN
from floe.pipeline.sparse import SparseConfig
from floe.pipeline.trackers import tracker_logs
from floe.store.artifacts import TrainJson
from floe.store.runs import Run, list_runs, open_run

__all__ = ["SELECTION_SKIP", "TRAIN_RUN_EVAL_SKIP", "adapter_parameters", "chosen_layers", "eval_runs_for",
           "eval_table", "export_downloads", "export_file", "export_folder", "export_names", "loss_curve",
           "memory_estimate", "model_facts", "pending_training", "selection_file", "tracker_logs",
           "train_runs_for", "train_summary", "trainable_parameters"]

# The options a form for ``floe eval --train-run`` leaves out: the evaluation takes the
# adapter, and the model and held-out data (every data option), from the train run.
TRAIN_RUN_EVAL_SKIP = ("train_run", "adapter", *(f.name for f in dataclasses.fields(DataConfig)))
# The options a page's layer choice sets (ranking run, policy, k, layers), left out of its
# form; a policy-random draw's seed stays an option.
SELECTION_SKIP = tuple(f.name for f in dataclasses.fields(SparseConfig) if f.name != "random_seed")


def chosen_layers(run: Run, policy: str, k: int) -> list[int]:
    """The layers a policy adapts: the top-k of its ranking, sorted (all layers for 'all';
    for 'spread' the k evenly spaced layers). ``run``: the score run, or for policy probe
    the probe run that ranks the layers."""
    order = ranking(run, policy)
    return sorted(order) if policy == "all" else selected_layers(policy, order, k)


def _adapter_file(score_run: Run) -> Path:
    warm = open_run(score_run.config["warmup_run"], score_run.path.parent.parent)
    return warm.file("adapter/adapter_model.safetensors")


@memo_by_state
def adapter_parameters(score_run: Run) -> tuple[dict[int, int], dict[int, int], int]:
    """Per layer, the warm-up adapter's rank-proportional (A, B) and fixed (router) counts,
    and its rank: from the safetensors header, nothing loaded."""
    from safetensors import safe_open
    per_rank: dict[int, int] = {}
    fixed: dict[int, int] = {}
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
def model_facts(model: str):
    """The model's dimensions for the memory plan (floe.models.memory.ModelDims), from its
    config.json; None when the model folder is not on this machine (an embedded model
    before its first conversion, a hub id)."""
    from floe.models.load import EMBEDDED
    from floe.pipeline.plan import model_dims
    from floe.store.runs import cache_root
    folder = cache_root() / "models" / model if model in EMBEDDED else Path(model)
    if not (folder / "config.json").is_file():
        return None
    try:
        return model_dims(str(folder))
    except (ValueError, OSError):
        return None


def memory_estimate(score_run: Run, chosen: list[int], trainable: int, cuda: bool) -> dict | None:
    """The plan's training-memory estimate in GiB, with its parts (None without the model
    here): floe.models.memory.training_memory, the formula ``floe plan`` prints, at the
    analysis's batch size and length, with ``trainable`` adapter parameters.
    Measured peaks appear in train.json after training."""
    from floe.models.memory import training_memory
    warm = score_run.config["warmup"]  # model, batch and length as in the analysis
    dims = model_facts(warm["model"]["model"])
    if dims is None or not chosen:
        return None
    adapter = warm["adapter"]
    tokens = warm["train"]["batch_size"] * warm["data"]["max_length"]
    stage = training_memory(dims, tokens, chosen, adapter["r"], adapter["experts"], tuple(adapter["targets"]),
                            2 if cuda else 4, trainable=trainable)
    gib = stage.gib()
    return {"total": sum(gib.values()), **gib}


def train_runs_for(score_run: Run, policy: str, k: int, root: Path | None = None) -> list[Run]:
    """Training runs (any status) that adapt this score run's policy top-k, newest first
    (``score_run``: the probe run for policy probe)."""
    by = "probe_run" if policy in MEASURED else "score_run"
    out = []
    for run in list_runs(root):
        if run.kind != "train":
            continue
        with skip_corrupt():
            sel = run.config.get("selection") or {}
            if sel.get(by) == score_run.id and sel.get("policy") == policy and \
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
    t: TrainJson = run_json(run, TRAIN)
    peak = t.get("peak_memory_bytes")
    return pd.DataFrame([{"layers": ", ".join(map(str, t.get("layers", []))), "r": t.get("r"),
                          "steps": t.get("steps"), "val loss before": t.get("val_loss_before"),
                          "val loss after": t.get("val_loss_after"),
                          "trainable parameters": t.get("trainable_parameters"),
                          "peak memory (GiB)": round(peak / 2 ** 30, 2) if peak else None,
                          "seconds": _seconds(t.get("seconds")), "device": t.get("device")}])


def _seconds(value: float | None) -> float | None:
    """Seconds to a precision a person reads: 0.1 s under a minute, whole seconds above."""
    if value is None:
        return None
    return round(value, 1) if value < 60 else float(round(value))


def _flags(args: list[str]) -> dict[str, str]:
    """--flag value pairs of a command line (switches without a value map to "")."""
    out, i = {}, 0
    while i < len(args):
        if args[i].startswith("--"):
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
            out[args[i]] = value
            i += 2 if value else 1
        else:
            i += 1
    return out


def pending_training(job_list: list, ranked_by: Run, policy: str, k: int) -> dict | None:
    """The queued or running ``floe train`` job of this choice (ranking run, policy, k), if
    any: its training run may not exist yet (the job is still loading), yet the page must not
    say that nothing trains it."""
    by = "--probe-run" if policy in MEASURED else "--score-run"
    for job in job_list:
        args = job.get("args") or []
        if job.get("status") not in ("queued", "running") or args[:1] != ["train"]:
            continue
        given = _flags(args[1:])
        if given.get(by) != ranked_by.id or given.get("--policy", "floe") != policy:
            continue
        if policy == "all" or given.get("--k", str(SparseConfig.k)) == str(k):
            return job
    return None


def eval_runs_for(train_run: Run, root: Path | None = None) -> list[Run]:
    out = []
    for run in finished("eval", root):
        with skip_corrupt():
            if (run.config.get("adapter") or {}).get("train_run") == train_run.id:
                out.append(run)
    return out


def eval_table(runs: list[Run]) -> pd.DataFrame:
    """Headline metrics of eval runs (lm-eval's acc, acc_norm and their stderr), one row each."""
    rows = []
    for run in runs:
        with skip_corrupt():
            result = run_json(run, EVAL)
            rows.append({"run": run.id, "scorer": result.get("scorer", "floe (before lm-eval)"),
                         **headline(result, stderr=True)})
    return pd.DataFrame(rows)


def selection_file(score_run: Run, policy: str, k: int, ranked_by: Run | None = None) -> bytes:
    """The layer list of a choice, as JSON: what to adapt, and the ranking it came from
    (``ranked_by``: the probe run of policy probe)."""
    ranked_by = ranked_by or score_run
    chosen = chosen_layers(ranked_by, policy, k)
    source = {"probe_run": ranked_by.id} if policy in MEASURED else {}
    return json.dumps({"model": score_run.config["warmup"]["model"]["model"], "score_run": score_run.id,
                       **source, "policy": policy, "k": len(chosen), "layers": chosen,
                       "ranking": ranking(ranked_by, policy)}, indent=2).encode()


def export_folder(train_run: Run) -> Path:
    """``floe export`` of a finished train run into cache/exports/<run id> (made once)."""
    from floe.pipeline.export import MARKER, export
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


def export_names(train_run: Run) -> list[str]:
    """The download names of a train run's export (export_file builds each on request)."""
    return ["config.yaml", "peft_adapter_config.json", "adapter.zip", f"{train_run.id}.zip"]


def export_file(train_run: Run, name: str) -> bytes:
    """One download of the export, built when it is asked for (the export is written once,
    into cache/exports; a zip is made at each request, never on a page rerun)."""
    folder = export_folder(train_run)
    if name == "config.yaml":
        return (folder / "config.yaml").read_bytes()
    if name == "peft_adapter_config.json":
        return (folder / "peft" / "adapter_config.json").read_bytes()
    if name == "adapter.zip":
        return _zip_folder(folder / "adapter", "adapter")
    if name == f"{folder.name}.zip":
        return _zip_folder(folder, folder.name)
    raise ValueError(f"no export file {name!r}; the export has {', '.join(export_names(train_run))}")


def _zip_folder(folder: Path, prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, f"{prefix}/{path.relative_to(folder)}")
    return buf.getvalue()
