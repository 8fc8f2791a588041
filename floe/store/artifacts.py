"""Every JSON artifact's file name and shape, in one place (docs/artifacts.md).

Writers and readers share these shapes: ``Run.write_json`` checks a payload against its
file's shape before writing (an extra, missing or mistyped field fails in the writer, where
the tests see it), and ``Run.read_json`` checks what it reads (a damaged or foreign file is
a CorruptRunError naming the field, not a KeyError three calls later). Extra fields are
refused on write and tolerated on read, so a newer writer's runs stay readable. The check
is pydantic's validation of the TypedDicts below (strict types, no coercion).

Pure data: this module imports nothing of floe (but floe.store.set_search, pure data too), so every
layer may use it.
"""
from __future__ import annotations

import functools
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, TypedDict  # pydantic needs these on Python < 3.12

from floe.store.set_search import SetOrder, SetSearch, Suggestion  # probe.json's set search (pure data too)

__all__ = ["ARTIFACTS", "COMPARE", "CONFIG", "EVAL", "JOB", "LAYERS", "PROBE", "SEARCH", "STABILITY", "STATE",
           "TIMINGS", "TRAIN", "WARMUP", "ArtifactError", "Baselines", "CompareCell", "CompareJson", "Components",
           "Differences", "EvalJson", "EvalSummary", "JobRecord", "LayersJson", "MeanCI", "ProbeCell", "ProbeHead",
           "ProbeJson", "Refinement", "SearchJson", "SetOrder", "SetSearch", "Signals", "StabilityJson", "StateJson",
           "Suggestion", "TaskResult", "TimingsJson", "TrainJson", "TrainSummary", "Tuning", "WarmupJson", "check"]

CONFIG, STATE = "config.json", "state.json"
WARMUP, TRAIN, LAYERS, TIMINGS = "warmup.json", "train.json", "layers.json", "timings.json"
EVAL, COMPARE, PROBE, SEARCH, STABILITY = "eval.json", "compare.json", "probe.json", "search.json", "stability.json"
JOB = "job"  # a job record (cache/jobs/<id>.json)

_STRICT = ConfigDict(extra="forbid", strict=True)


class ArtifactError(ValueError):
    """A JSON artifact that does not have its documented shape."""


# --------------------------------------------------------------------------- every run
@with_config(_STRICT)
class StateJson(TypedDict, total=False):
    """state.json: the run's status and, once done, the checksums of its artifacts."""

    status: str                  # new, running, done, failed, cancelled
    updated: float               # time.time() of the last change
    pid: int
    host: str
    started: float
    finished: float
    error: str | None
    manifest: dict[str, str]     # artifact path -> sha256 (done runs)


# --------------------------------------------------------------------------- trainings
@with_config(_STRICT)
class TrainSummary(TypedDict):
    """What ``floe.pipeline.train.train`` returns; warmup.json and train.json extend it."""

    steps: int
    total_steps: int
    losses: list[float]          # training loss per step
    resumed_from: int            # the step a resumed run started at (0: from scratch)
    seconds: float
    world_size: int


@with_config(_STRICT)
class WarmupJson(TrainSummary):
    """warmup.json of a warm-up run."""

    val_loss_before: float | None
    val_loss_after: float | None
    n_train: int
    n_val: int
    trainable_parameters: int
    device: str


@with_config(_STRICT)
class TrainJson(TrainSummary):
    """train.json of a sparse training run."""

    layers: list[int]
    r: int
    val_loss_before: float | None
    val_loss_after: float | None
    n_train: int
    n_val: int
    trainable_parameters: int
    peak_memory_bytes: int | None
    peak_memory_source: str
    device: str


# --------------------------------------------------------------------------- scoring
@with_config(_STRICT)
class Components(TypedDict):
    """Per-layer parts of the score (lists indexed by layer)."""

    head_share: list[float]       # retained share of head capacity after tuning
    neuron_share: list[float]     # retained share of neuron capacity after tuning
    binary_share: list[float]     # retained share of capacity of the refined binary masks
    fisher_heads: list[float]     # sum of the heads' mask Fisher
    fisher_neurons: list[float]
    taylor_heads: list[float]     # sum of the heads' Taylor costs
    taylor_neurons: list[float]
    retained_heads: list[int]     # units the refined masks keep
    retained_neurons: list[int]


@with_config(_STRICT)
class Baselines(TypedDict):
    """Rankings (most important first) of the baseline policies."""

    random: list[int]
    weight_norm: list[int]
    adapter_norm: list[int]
    all: list[int]
    # Since 0.3.0 (a score run of 0.2.0 has neither; its policies are then not offered):
    lora_drop: NotRequired[list[int]]  # by the warm-up adapter's summed squared output norm
    ht_sr: NotRequired[list[int]]      # by the mean HT-SR alpha of the layer's weights


@with_config(_STRICT)
class Signals(TypedDict):
    """The baselines' per-layer values behind their rankings."""

    weight_norm: list[float]
    adapter_norm: list[float]
    lora_drop: NotRequired[list[float]]
    ht_sr: NotRequired[list[float]]


@with_config(_STRICT)
class Refinement(TypedDict):
    """Losses are sum of tau over masked units; costs are per-unit Taylor costs over C."""

    swaps: int
    dropped_to_fit: int
    fill: bool                    # whether the fill step ran (ScoreConfig.fill)
    filled: int                   # units the fill step added back
    greedy_loss: float            # of the greedy masks (Algorithm 1), before fitting
    greedy_cost_ratio: float      # the greedy masks' cost / C (above 1: drop-to-fit acts)
    fit_loss: float | None        # after drop-to-fit, before the swaps
    refined_loss: float | None    # after the swaps (and the fill step, when on)
    refined_cost_ratio: float     # the refined masks' cost / C


@with_config(_STRICT)
class Tuning(TypedDict):
    fallbacks: int
    error_binary: float
    error_tuned: float


@with_config(_STRICT)
class LayersJson(TypedDict):
    """layers.json of a score run (docs/artifacts.md)."""

    n_layers: int
    n_heads: int
    n_neurons: int
    beta: float
    seed: int
    layer_scores: list[float]                      # s_k with refinement
    ranking: list[int]                             # layers by s_k, most important first
    layer_scores_without_refinement: list[float]
    ranking_without_refinement: list[int]
    components: Components
    baselines: Baselines
    signals: NotRequired[Signals]                  # since 0.3.0
    refinement: Refinement
    tuning: Tuning
    model: str
    data: str
    ratio: float
    n_scoring_samples: int


@with_config(_STRICT)
class TimingsJson(TypedDict):
    """timings.json of a score run: seconds per stage, and where it ran."""

    taylor: float
    fisher: float
    search: float
    refine: float
    tune: float
    baselines: float
    total: float
    device: str
    torch: str
    transformers: str
    python: str
    host: str
    threads: int


# --------------------------------------------------------------------------- evaluation
@with_config(_STRICT)
class TaskResult(TypedDict):
    acc: float
    acc_stderr: float
    acc_norm: float | None          # None where lm-eval's task reports acc only (MMLU, Winogrande)
    acc_norm_stderr: float | None
    n: int
    correct: list[int]              # per item: 1 if the highest log-likelihood choice is gold
    loglikelihoods: list[list[float]]  # per item, per choice: summed log p(choice | context)


@with_config(_STRICT)
class EvalSummary(TypedDict):
    """What ``floe.eval.evaluate.evaluate_model`` returns; eval.json extends it."""

    val_loss: NotRequired[float]     # only with held-out data
    perplexity: NotRequired[float]
    tasks: dict[str, TaskResult]
    scorer: str                      # "lm-eval <version>"


@with_config(_STRICT)
class EvalJson(EvalSummary):
    """eval.json of an eval run."""

    model: str
    adapter: dict[str, Any] | None   # {"train_run": id} or {"adapter_dir", "sha256"}
    device: str


# --------------------------------------------------------------------------- experiments
@with_config(_STRICT)
class MeanCI(TypedDict):
    """A mean over seeds and its two-sided t-interval (None with fewer than two values)."""

    n: int
    mean: float | None               # None: no value yet
    std: NotRequired[float | None]
    half_width: NotRequired[float | None]
    ci_low: NotRequired[float | None]
    ci_high: NotRequired[float | None]


@with_config(_STRICT)
class CompareCell(TypedDict):
    """One (k, policy, metric) of a compare run: its values over seeds and their interval."""

    k: int
    policy: str
    metric: str
    values: list[float]
    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    half_width: float | None


@with_config(_STRICT)
class Differences(TypedDict):
    """compare.json's paired differences against one reference policy."""

    reference: str
    cells: list[CompareCell]     # policy = the policy compared with the reference
    tables: dict[str, str]       # metric -> text table of the differences


@with_config(_STRICT)
class CompareJson(TypedDict):
    """compare.json of a compare run (rewritten after every cell while it runs)."""

    score_run: str
    model: str
    n_layers: int
    partial: bool                # True until every cell is done
    config: dict[str, Any]       # the CompareConfig
    metrics: list[str]           # accuracies first
    cells: list[CompareCell]
    results: list[dict[str, Any]]  # one per trained cell: k, policy, seed, layers, runs, metrics
    base: dict[str, Any]         # the base model's eval run and metrics
    tables: dict[str, str]       # metric -> Table-2-like text table
    differences: NotRequired[Differences]  # each policy minus the reference, paired by seed
    selection: NotRequired[dict[str, Any]]  # with a probe run: its id, its data, the overlap


@with_config(_STRICT)
class ProbeCell(TypedDict):
    """One measurement of a probe. Cell probes train (layer, seed) as a run of its own;
    the cheap schedules (one model load) have no run: ``train_run`` and ``train_seconds``
    are None, ``steps`` says at which budget the gain was read, and a halving cell is
    the mean over seeds (``seed`` None)."""

    layer: int                   # the probed layer (-1: the all-layer reference)
    seed: int | None
    train_run: str | None
    adapted: list[int]           # the layers the cell's adapter sits on
    val_loss_before: float
    val_loss_after: float
    gain: float | None           # single: before - after; leave-one-out: after - after(all)
    train_seconds: float | None
    steps: NotRequired[int]      # cheap schedules: the optimizer steps behind the gain
    adapter_sha256: NotRequired[str | None]  # cell probes: sha256 of the trained adapter's weights


@with_config(_STRICT)
class ProbeHead(TypedDict):
    """What every probe schedule writes alike (``floe.experiments.probe.summary_head``);
    probe.json extends it."""

    model: str
    data: str
    mode: str
    n_layers: int
    layers: list[int]            # probed layers
    seeds: list[int]
    config: dict[str, Any]       # data, adapter, train (seed per cell) and probe settings


@with_config(_STRICT)
class ProbeJson(ProbeHead):
    """probe.json of a probe run (rewritten after every cell while it runs)."""

    partial: bool                # True until every cell is done
    cells: list[ProbeCell]
    gain: list[float | None]     # per probed layer: mean gain over seeds (None: no cell yet)
    gain_ci: list[MeanCI]        # per probed layer: its interval over seeds
    base_val_loss: float | None  # the unadapted model's validation loss
    cell_seconds: float | None   # mean wall time of the cells computed in this session (shared:
                                 # by the workers that trained them, as the study records)
    storage: str | None          # the shared storage, password redacted
    # Cheap schedules (floe.experiments.cheap_probe) only: the measured ranking (the layers
    # dropped at an early rung were measured on fewer steps, so their gains rank them
    # only within their rung), the rungs, and the wall time of the whole probe.
    schedule: NotRequired[str]
    ranking: NotRequired[list[int]]
    rungs: NotRequired[list[dict[str, Any]]]
    seconds: NotRequired[float]     # the set search's time excluded (it has its own)
    train_steps: NotRequired[int]   # optimizer steps of all its trainings together
    set_search: NotRequired[SetSearch]  # joint probes since issue 20: what policy probe-set reads


@with_config(_STRICT)
class SearchJson(TypedDict):
    """search.json of a rank search (also what ``summarize`` reads live from a study)."""

    study_name: str
    storage: str                 # the storage URL, password redacted
    best_r: int | None
    best_value: float | None
    best_trial: int | None
    n_complete: int
    n_finished: int              # complete + pruned
    trials: list[dict[str, Any]]  # number, state, r, value, intermediate, user attrs
    n_trials: NotRequired[int]   # the target (search.json only)


@with_config(_STRICT)
class StabilityJson(TypedDict):
    """stability.json: per data ratio (as a string key, largest first), the score run and
    each layer's rank (1 = most important), with and without refinement."""

    ratios: list[float]
    score_runs: dict[str, str]
    ranks: dict[str, list[int]]
    ranks_without_refinement: dict[str, list[int]]


# --------------------------------------------------------------------------- the app's jobs
@with_config(_STRICT)
class JobRecord(TypedDict):
    """A background job of the app (cache/jobs/<id>.json, floe.store.jobs)."""

    id: str
    label: str
    command: list[str]
    args: list[str]              # the floe arguments shown to the user
    gpus: str                    # one or all
    status: str                  # queued, running, done, failed, cancelled
    created: float
    updated: float
    started: float | None
    finished: float | None
    pid: int | None
    devices: list[str]
    returncode: int | None
    error: str | None
    result: dict[str, Any] | None  # the command's --json summary, once done
    attempts: int
    cancel_requested: bool
    runs: list[str]              # the runs the job touched


ARTIFACTS: dict[str, Any] = {
    STATE: StateJson, WARMUP: WarmupJson, TRAIN: TrainJson, LAYERS: LayersJson, TIMINGS: TimingsJson,
    EVAL: EvalJson, COMPARE: CompareJson, PROBE: ProbeJson, SEARCH: SearchJson, STABILITY: StabilityJson,
    JOB: JobRecord,
}


@functools.cache
def _adapter(name: str) -> TypeAdapter:
    return TypeAdapter(ARTIFACTS[name])


def _problems(error: ValidationError, tolerate_extra: bool) -> list[str]:
    return [f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in error.errors()
            if not (tolerate_extra and e["type"] == "extra_forbidden")]


def check(name: str, payload: Any, *, writing: bool = False) -> Any:
    """``payload`` unchanged if it has the shape of artifact ``name`` (file names without a
    shape pass as they are); else ArtifactError naming the first fields that differ.
    ``writing``: extra fields are refused too."""
    if name not in ARTIFACTS:
        return payload
    try:
        _adapter(name).validate_python(payload)
    except ValidationError as e:
        problems = _problems(e, tolerate_extra=not writing)
        if problems:
            shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
            raise ArtifactError(f"{name} does not have its documented shape: {shown}") from None
    return payload
