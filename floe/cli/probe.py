"""CLI command ``floe probe``: each layer's measured gain, and how well every ranking policy
of a score run agrees with it (floe.experiments.probe, floe.experiments.validation); for a
joint probe with ``--set-search`` (off by default: about L^2 validation passes per seed)
also its set search, the predicted loss of each ranking at every k and the suggested k
(floe.experiments.cheap_probe)."""
from __future__ import annotations

from floe.adapters.hydralora import HydraLoraConfig
from floe.cli.experiments import int_list
from floe.cli.options import COMMON, Command, configs, from_namespace, given, setup_from, text_flag
from floe.experiments.cheap_probe import SetSearchConfig
from floe.experiments.probe import PROBE_BUDGET, ProbeConfig
from floe.pipeline.data import DataConfig
from floe.pipeline.setup import ModelConfig
from floe.pipeline.train import TrainConfig

__all__ = ["COMMANDS"]

_BUDGET = ", ".join(f"{k.replace('_', '-')} {v:g}" for part in PROBE_BUDGET.values() for k, v in part.items())


def probe_configs(args):
    """(setup, probe): the probe's budget defaults, then the score run's model and data,
    then what was typed."""
    from floe.pipeline.sparse import score_run_defaults
    typed = given(args)
    defaults = score_run_defaults(typed["score_run"]) if typed.get("score_run") else {}
    setup = setup_from({**PROBE_BUDGET["data"], **PROBE_BUDGET["train"], **defaults, **typed}, layers=None)
    return setup, from_namespace(ProbeConfig, args)


# The score run's rankings a joint probe draws curves for, beside its own.
CURVE_POLICIES = ("floe", "adapter-norm")


def score_rankings(scored) -> dict[str, list[int]]:
    """The score run's rankings of CURVE_POLICIES that it holds."""
    from floe.pipeline.policies import available_policies, ranking_from
    from floe.pipeline.score import load_layers
    layers = load_layers(scored)
    return {p: ranking_from(layers, p) for p in CURVE_POLICIES if p in available_policies(layers)}


def _probe(args) -> dict:
    from floe.experiments.cheap_probe import run_cheap_probe, set_search_summary
    from floe.experiments.probe import SUMMARY, run_probe
    from floe.experiments.validation import validation_summary
    from floe.pipeline.score import open_score_run
    setup, probe = probe_configs(args)
    search = from_namespace(SetSearchConfig, args)
    scored = open_score_run(args.score_run) if args.score_run else None
    if probe.schedule == "cells":
        run = run_probe(setup, probe, force=args.force, show_progress=not args.quiet)
    else:
        run = run_cheap_probe(setup, probe, force=args.force, show_progress=not args.quiet, search=search,
                              rankings=score_rankings(scored) if scored else None,
                              score_run=scored.id if scored else None)
    summary = validation_summary(run, scored)
    found = set_search_summary(run.read_json(SUMMARY), search.tolerance)
    if found is not None:
        summary["set_search"] = found
        summary["suggested_k"] = found["suggested"]["how"]  # the one line of the plain output
    return summary


COMMANDS = {
    "probe": Command(
        "measure each layer's validation-loss gain when adapted alone (or left out), and how "
        f"well each ranking policy agrees with it. Budget defaults for the probe: {_BUDGET}",
        (text_flag("score_run", "score run whose rankings are checked (none given: the newest on "
                   "the same model and data); also sets the default model and data"),
         text_flag("layers", "layers to probe, comma-separated (none given: every layer)", parse=int_list),
         *configs(ModelConfig, DataConfig, HydraLoraConfig, TrainConfig, ProbeConfig, SetSearchConfig), *COMMON),
        _probe),
}
