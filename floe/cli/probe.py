"""CLI command ``floe probe``: each layer's measured gain, and how well every ranking policy
of a score run agrees with it (floe.experiments.probe, floe.experiments.validation)."""
from __future__ import annotations

from floe.adapters.hydralora import HydraLoraConfig
from floe.cli.experiments import int_list
from floe.cli.options import COMMON, Command, configs, from_namespace, given, setup_from, text_flag
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


def _probe(args) -> dict:
    from floe.experiments.cheap_probe import run_cheap_probe
    from floe.experiments.probe import run_probe
    from floe.experiments.validation import validation_summary
    from floe.pipeline.score import open_score_run
    setup, probe = probe_configs(args)
    measure = run_probe if probe.schedule == "cells" else run_cheap_probe
    run = measure(setup, probe, force=args.force, show_progress=not args.quiet)
    scored = open_score_run(args.score_run) if args.score_run else None
    return validation_summary(run, scored)


COMMANDS = {
    "probe": Command(
        "measure each layer's validation-loss gain when adapted alone (or left out), and how "
        f"well each ranking policy agrees with it. Budget defaults for the probe: {_BUDGET}",
        (text_flag("score_run", "score run whose rankings are checked (none given: the newest on "
                   "the same model and data); also sets the default model and data"),
         text_flag("layers", "layers to probe, comma-separated (none given: every layer)", parse=int_list),
         *configs(ModelConfig, DataConfig, HydraLoraConfig, TrainConfig, ProbeConfig), *COMMON),
        _probe),
}
