"""CLI commands after scoring: train, search-rank, eval, compare, export.

Thin: parse options into the stages' config dataclasses, call the stage, return a summary.
"""
from __future__ import annotations

import argparse
import dataclasses

from floe.adapters.hydralora import HydraLoraConfig
from floe.cli.options import COMMON, Command, configs, from_namespace, given, setup_from, text_flag
from floe.eval.evaluate import EvalConfig
from floe.experiments.compare import CompareConfig
from floe.experiments.ranksearch import RankSearchConfig
from floe.pipeline.data import DataConfig
from floe.pipeline.generate import GenerateConfig
from floe.pipeline.setup import ModelConfig, Setup
from floe.pipeline.sparse import SparseConfig
from floe.pipeline.trackers import TrackConfig
from floe.pipeline.train import TrainConfig

__all__ = ["COMMANDS", "training_setup"]


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}") from None


LAYERS = text_flag("layers", "explicit decoder layers to adapt, comma-separated (overrides "
                   "--score-run/--policy/--k)", parse=int_list)


def training_setup(args, base: dict | None = None) -> tuple[Setup, SparseConfig]:
    """(setup, sparse) from a --config file, score-run defaults and the command line, later
    ones winning."""
    from floe.pipeline.sparse import probe_run_defaults, score_run_defaults
    typed, base = given(args), base or {}
    sections = {s: dict(base.get(s) or {}) for s in ("model", "data", "adapter", "train")}
    ranked_by = typed.get("score_run") or typed.get("probe_run")
    if ranked_by:
        defaults = (score_run_defaults if typed.get("score_run") else probe_run_defaults)(ranked_by)
        sections["model"].setdefault("model", defaults["model"])
        sections["data"].setdefault("data", defaults["data"])
    selection = {"layers": base.get("layers")} if base.get("layers") and not ranked_by else {}
    setup = Setup(from_namespace(ModelConfig, {**sections["model"], **typed}),
                  from_namespace(DataConfig, {**sections["data"], **typed}),
                  from_namespace(HydraLoraConfig, {**sections["adapter"], **typed}, layers=None),
                  from_namespace(TrainConfig, {**sections["train"], **typed}))
    return setup, from_namespace(SparseConfig, {**selection, **typed})


# --------------------------------------------------------------------------- train
def _train(args) -> dict:
    from floe.pipeline.export import read_config
    from floe.pipeline.sparse import SUMMARY, rank_and_world_size, run_sparse_training
    base = read_config(args.config) if args.config else None
    run = run_sparse_training(*training_setup(args, base), force=args.force,
                              show_progress=not args.quiet)
    rank = rank_and_world_size()[0]
    if rank != 0:
        return {"rank": rank, "run": run.id}
    return {"run": run.id, "path": str(run.path), **run.read_json(SUMMARY)}


# --------------------------------------------------------------------------- search-rank
def _search(args) -> dict:
    from floe.experiments.ranksearch import SUMMARY, run_rank_search
    setup, sparse = training_setup(args)
    run = run_rank_search(setup, sparse, from_namespace(RankSearchConfig, args), force=args.force,
                          show_progress=not args.quiet)
    summary = run.read_json(SUMMARY)
    return {"run": run.id, "path": str(run.path), **summary}


# --------------------------------------------------------------------------- eval
def _eval(args) -> dict:
    from floe.eval.evaluate import SUMMARY, headline, run_evaluation
    typed = given(args)
    model = from_namespace(ModelConfig, args)
    data_given = any(f.name in typed for f in dataclasses.fields(DataConfig))
    run = run_evaluation(typed.get("model") if args.train_run else model.model,
                         from_namespace(EvalConfig, args),
                         data=from_namespace(DataConfig, args) if data_given or not args.train_run else None,
                         train_run=args.train_run, adapter_dir=args.adapter, device=model.device,
                         force=args.force, show_progress=not args.quiet)
    result = run.read_json(SUMMARY)
    return {"run": run.id, "path": str(run.path), **headline(result),
            "tasks": {t: {k: v for k, v in r.items() if k not in ("correct", "loglikelihoods")}
                      for t, r in result["tasks"].items()}}


# --------------------------------------------------------------------------- compare
def _compare(args) -> dict:
    from floe.experiments.compare import SUMMARY, TABLE, run_compare
    from floe.pipeline.sparse import score_run_defaults
    typed = given(args)
    defaults = score_run_defaults(args.score_run)
    setup = setup_from({"model": defaults["model"], "data": defaults["data"], **typed}, layers=None)
    run = run_compare(args.score_run, setup, from_namespace(EvalConfig, args),
                      from_namespace(CompareConfig, args), force=args.force,
                      show_progress=not args.quiet, probe_run=args.probe_run)
    summary = run.read_json(SUMMARY)
    tables = [*summary["tables"].values(), *summary.get("differences", {}).get("tables", {}).values()]
    return {"run": run.id, "path": str(run.path), "csv": str(run.file(TABLE)),
            "tables": summary["tables"], "differences": summary.get("differences"),
            "table": "\n" + "\n\n".join(tables)}


# --------------------------------------------------------------------------- export
def _export(args) -> dict:
    from floe.pipeline.export import export
    target = export(args.train_run, args.to or f"floe-export-{args.train_run}", force=args.force)
    return {"path": str(target), "files": sorted(str(p.relative_to(target))
                                                for p in target.rglob("*") if p.is_file())}


# --------------------------------------------------------------------------- generate
def _generate(args) -> dict:
    from floe.pipeline.generate import generate_pair, load_adapted
    model, tokenizer = load_adapted(args.adapter, given(args).get("model"),
                                    from_namespace(ModelConfig, args).device)
    return generate_pair(model, tokenizer, from_namespace(GenerateConfig, args))


_TRAINING = configs(ModelConfig, DataConfig, HydraLoraConfig, TrainConfig)
COMMANDS = {
    "train": Command(
        "sparse HydraLoRA fine-tuning on the top-k layers of a ranking or a layer list",
        (text_flag("config", "a config.yaml written by floe export (options given here override it)"),
         *_TRAINING, *configs(SparseConfig), LAYERS, *configs(TrackConfig), *COMMON), _train),
    "search-rank": Command(
        "Optuna TPE search of the adapter rank on the chosen layers",
        (*configs(ModelConfig, DataConfig), *configs(HydraLoraConfig, skip=("r",)), *configs(TrainConfig),
         *configs(RankSearchConfig), *configs(SparseConfig), LAYERS, *configs(TrackConfig), *COMMON), _search),
    "eval": Command(
        "held-out loss/perplexity and benchmark accuracy of the base model or an adapter",
        (text_flag("train_run", "evaluate the adapter of this train run (its model and held-out data "
                   "by default)"),
         text_flag("adapter", "evaluate the adapter in this folder (e.g. an export's adapter/)"),
         *configs(ModelConfig), *configs(EvalConfig), *configs(DataConfig), *COMMON), _eval),
    "compare": Command(
        "layer-selection policies x layer counts x seeds, with 95 percent t-intervals (Table 2)",
        (text_flag("score_run", "the score run whose rankings are compared", required=True),
         text_flag("probe_run", "the probe run that ranks policy 'probe' (floe probe). For a fair "
                   "comparison give the compare another data --seed than the probe's, so the "
                   "probe's own validation sample never judges it"),
         *configs(ModelConfig), *configs(DataConfig), *configs(HydraLoraConfig), *configs(TrainConfig),
         *configs(EvalConfig), *configs(CompareConfig), *configs(TrackConfig), *COMMON), _compare),
    "generate": Command(
        "greedy completion of a prompt by the base model and by the model with a trained adapter",
        (text_flag("adapter", "an export folder, a train run id, or an adapter folder (then give --model)",
                   required=True), *configs(ModelConfig, skip=("trust_remote_code",)),
         *configs(GenerateConfig), *COMMON), _generate),
    "export": Command(
        "config.yaml, peft LoraConfig and adapter weights of a trained run",
        (text_flag("train_run", "the finished train run to export", required=True),
         text_flag("to", "export folder (default: floe-export-<run id> here)"), *COMMON), _export),
}
