"""What every page reads: memoised readers of run files, run listings and labels.

No Streamlit here and no science: every number comes from a run's files
(docs/artifacts.md) through the core's readers; the page modules only select, align and
draw. Readers are memoised on the run's state file, so a page rerun costs little.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

from floe.pipeline.data import DataConfig
from floe.pipeline.policies import ranking_for
from floe.pipeline.score import load_layers
from floe.store.artifacts import LayersJson
from floe.store.runs import DONE, CorruptRunError, Run, list_runs

__all__ = ["budget_line", "budget_warning", "describe", "finished", "layers", "memo_by_state", "policy_colors",
           "ranking", "run_json", "run_label", "short_name", "skip_corrupt", "training_preset", "usable_score_runs",
           "warmup_budget"]


def _stamp(run: Run) -> int:
    """Changes whenever the run's state does (a finish, a resume, a delete)."""
    try:
        return run.file("state.json").stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def memo_by_state(fn):
    """Cache a reader per (run folder, state stamp, args): cheap reruns, fresh after changes."""
    cached = functools.lru_cache(maxsize=256)(lambda path, stamp, *a: fn(Run(Path(path)), *a))

    @functools.wraps(fn)
    def wrapper(run: Run, *args):
        return cached(str(run.path), _stamp(run), *args)
    wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]  # typeshed's wraps() type takes no attributes
    return wrapper


@memo_by_state
def layers(run: Run) -> LayersJson:
    """layers.json of a finished, intact score run (CorruptRunError otherwise)."""
    return load_layers(run)


@memo_by_state
def ranking(run: Run, policy: str) -> list[int]:
    return [int(k) for k in ranking_for(run, policy)]


@memo_by_state
def run_json(run: Run, name: str) -> dict:
    """A JSON artifact of a finished, intact run."""
    run.verify()
    return run.read_json(name)


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


# The data options a training on an analysis's layers does not take from the analysis:
# those that pick the examples (the data comes with --score-run; ratio and seed stay the
# training's own).
_OWN_DATA_OPTIONS = ("data", "ratio", "seed")


def training_preset(score_run: Run) -> dict[str, str]:
    """Training defaults taken from the analysis: its other data options (sample sizes,
    length) and its batch size."""
    warm = score_run.config["warmup"]
    data = {f.name: warm["data"][f.name] for f in dataclasses.fields(DataConfig)
            if f.name not in _OWN_DATA_OPTIONS and f.name in warm["data"]}
    return {**{name: str(value) for name, value in data.items()}, "batch_size": str(warm["train"]["batch_size"])}


def finished(kind: str, root: Path | None = None) -> list[Run]:
    """Finished runs of one kind, newest first."""
    return [r for r in list_runs(root) if r.kind == kind and r.status == DONE]


def short_name(spec) -> str:
    spec = spec.get("model", "") if isinstance(spec, dict) else str(spec or "")
    return Path(spec).name if os.path.isabs(spec) else spec


def describe(run: Run) -> dict:
    """Model, data, ratio, budget and detail of any run kind, from its config."""
    try:
        cfg = run.config
    except CorruptRunError:
        return {"model": "?", "data": "?", "samples": None, "ratio": None, "budget": None,
                "detail": "corrupt config"}
    base = cfg.get("warmup", cfg)  # score runs nest their warm-up's config
    data = base.get("data") or {}
    ratios = cfg.get("ratios")
    return {"model": short_name(base.get("model")), "data": short_name(data.get("data")),
            "samples": data.get("max_samples"), "ratio": None if ratios else data.get("ratio"),
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


def run_label(run: Run) -> str:
    """A short unique name for a run in pickers and heatmap rows."""
    d = describe(run)
    ratio = f" · {d['ratio']:.0%}" if d["ratio"] is not None else ""
    samples = f" · {d['samples']} ex" if d.get("samples") is not None else ""
    beta = f" · β {d['budget']:g}" if d["budget"] is not None else ""
    detail = f" · {d['detail']}" if d["detail"] else ""
    return f"{d['model']} · {d['data']}{samples}{_steps(run)}{ratio}{beta}{detail} · {run.id.split('-', 1)[1][:6]}"


def _steps(run: Run) -> str:
    """" · 8 steps": a score run's warm-up budget (what its FLoE scores were computed after)."""
    if run.kind != "score":
        return ""
    try:
        steps = warmup_budget(run)["steps"]
    except (CorruptRunError, OSError, KeyError, ValueError):
        return ""
    return f" · {steps} steps" if steps is not None else ""


class skip_corrupt:
    """Leave out a source whose files are damaged (the Runs page shows those)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, (CorruptRunError, FileNotFoundError, KeyError))


@memo_by_state
def warmup_budget(run: Run) -> dict:
    """The warm-up budget behind a score run's FLoE scores (steps, examples, tokens); read
    once per state of the run (a page asks for it per row, twice)."""
    from floe.experiments.validation import warmup_budget as budget
    return budget(run)


def budget_line(run: Run) -> str:
    """A score run's warm-up budget in a few words, e.g. "8 steps · 64 examples · ≤ 128 tokens each"."""
    b = warmup_budget(run)
    if b["steps"] is None:
        return "warm-up budget unknown"
    tokens = f" · {b['tokens']:,} tokens" if b["tokens"] else ""
    return f"{b['steps']} warm-up steps · {b['examples']} examples · ≤ {b['max_length']} tokens each{tokens}"


def budget_warning(run: Run) -> str | None:
    """The plain note for a score run whose warm-up barely trained the adapter, else None."""
    from floe.experiments.validation import budget_sentence
    b = warmup_budget(run)
    return budget_sentence(b) if b["starved"] else None


def policy_colors() -> dict[str, str]:
    """One colour per policy, the same on every figure (Plotly's default cycle has 10 colours:
    with more policies two would share one)."""
    from plotly.colors import qualitative

    from floe.pipeline.policies import POLICIES
    palette = qualitative.Dark24
    return {policy: palette[i % len(palette)] for i, policy in enumerate(POLICIES)}

