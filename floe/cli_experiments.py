"""CLI commands after scoring: train, search-rank, eval, compare, export.

Thin: parse options into the stages' config dataclasses, call the stage, return a summary.
"""
from __future__ import annotations

import argparse

from .cli import _common
from .config import add_arguments, from_namespace
from .data import DataConfig
from .evaluate import EvalConfig
from .hydralora import HydraLoraConfig
from .compare import CompareConfig
from .ranksearch import RankSearchConfig
from .sparse import SparseConfig
from .train import TrainConfig
from .warmup import ModelConfig


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}")


def _selection_args(p: argparse.ArgumentParser) -> None:
    add_arguments(p, SparseConfig)
    p.add_argument("--layers", type=_int_list, default=argparse.SUPPRESS,
                   help="explicit decoder layers to adapt, comma-separated (overrides "
                        "--score-run/--policy/--k)")


def _given(args) -> dict:
    """Only the options the user typed (every config option defaults to SUPPRESS)."""
    return {k: v for k, v in vars(args).items() if v is not None}


def _training_configs(args, base: dict | None = None):
    """(model, data, adapter, training, sparse) from a --config file, score-run defaults
    and the command line, later ones winning."""
    from .sparse import score_run_defaults
    given, base = _given(args), base or {}
    sections = {s: dict(base.get(s) or {}) for s in ("model", "data", "adapter", "train")}
    if given.get("score_run"):
        defaults = score_run_defaults(given["score_run"])
        sections["model"].setdefault("model", defaults["model"])
        sections["data"].setdefault("data", defaults["data"])
    selection = {"layers": base.get("layers")} if base.get("layers") and "score_run" not in given else {}
    model = from_namespace(ModelConfig, {**sections["model"], **given})
    data = from_namespace(DataConfig, {**sections["data"], **given})
    adapter = from_namespace(HydraLoraConfig, {**sections["adapter"], **given}, layers=None)
    training = from_namespace(TrainConfig, {**sections["train"], **given})
    sparse = from_namespace(SparseConfig, {**selection, **given})
    return model, data, adapter, training, sparse


# --------------------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="a config.yaml written by floe export (options "
                   "given here override it)")
    add_arguments(p, ModelConfig)
    add_arguments(p, DataConfig)
    add_arguments(p, HydraLoraConfig)
    add_arguments(p, TrainConfig)
    _selection_args(p)
    _common(p)


def _cmd_train(args) -> dict:
    from .export import read_config
    from .sparse import SUMMARY, _distributed, run_sparse_training
    base = read_config(args.config) if args.config else None
    run = run_sparse_training(*_training_configs(args, base), force=args.force,
                              show_progress=not args.quiet)
    rank = _distributed()[0]
    if rank != 0:
        return {"rank": rank, "run": run.id}
    return {"run": run.id, "path": str(run.path), **run.read_json(SUMMARY)}


# --------------------------------------------------------------------------- search-rank
def _search_args(p: argparse.ArgumentParser) -> None:
    add_arguments(p, ModelConfig)
    add_arguments(p, DataConfig)
    add_arguments(p, HydraLoraConfig, skip=("r",))
    add_arguments(p, TrainConfig)
    add_arguments(p, RankSearchConfig)
    _selection_args(p)
    _common(p)


def _cmd_search(args) -> dict:
    from .ranksearch import SUMMARY, run_rank_search
    configs = _training_configs(args)
    run = run_rank_search(*configs, from_namespace(RankSearchConfig, args), force=args.force,
                          show_progress=not args.quiet)
    summary = run.read_json(SUMMARY)
    return {"run": run.id, "path": str(run.path), **summary}


# --------------------------------------------------------------------------- eval
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-run", default=None, help="evaluate the adapter of this train run "
                   "(its model and held-out data by default)")
    p.add_argument("--adapter", default=None, help="evaluate the adapter in this folder (e.g. an "
                   "export's adapter/)")
    add_arguments(p, ModelConfig)
    add_arguments(p, EvalConfig)
    add_arguments(p, DataConfig)
    _common(p)


def _cmd_eval(args) -> dict:
    from .evaluate import SUMMARY, headline, run_evaluation
    given = _given(args)
    model = from_namespace(ModelConfig, args)
    data_given = any(k in given for k in ("data", "ratio", "max_samples", "val_samples", "max_length", "seed"))
    run = run_evaluation(given.get("model") if args.train_run else model.model,
                         from_namespace(EvalConfig, args),
                         data=from_namespace(DataConfig, args) if data_given or not args.train_run else None,
                         train_run=args.train_run, adapter_dir=args.adapter, device=model.device,
                         force=args.force, show_progress=not args.quiet)
    result = run.read_json(SUMMARY)
    return {"run": run.id, "path": str(run.path), **headline(result),
            "tasks": {t: {k: v for k, v in r.items() if k != "correct"} for t, r in result["tasks"].items()}}


# --------------------------------------------------------------------------- compare
def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--score-run", required=True, help="the score run whose rankings are compared")
    add_arguments(p, ModelConfig)
    add_arguments(p, DataConfig)
    add_arguments(p, HydraLoraConfig)
    add_arguments(p, TrainConfig)
    add_arguments(p, EvalConfig)
    add_arguments(p, CompareConfig)
    _common(p)


def _cmd_compare(args) -> dict:
    from .compare import SUMMARY, TABLE, run_compare
    from .sparse import score_run_defaults
    given = _given(args)
    defaults = score_run_defaults(args.score_run)
    model = from_namespace(ModelConfig, {"model": defaults["model"], **given})
    data = from_namespace(DataConfig, {"data": defaults["data"], **given})
    run = run_compare(args.score_run, data, from_namespace(HydraLoraConfig, args, layers=None),
                      from_namespace(TrainConfig, args), from_namespace(EvalConfig, args),
                      from_namespace(CompareConfig, args), model, force=args.force,
                      show_progress=not args.quiet)
    summary = run.read_json(SUMMARY)
    return {"run": run.id, "path": str(run.path), "csv": str(run.file(TABLE)),
            "tables": summary["tables"], "table": "\n" + "\n\n".join(summary["tables"].values())}


# --------------------------------------------------------------------------- export
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-run", required=True, help="the finished train run to export")
    p.add_argument("--to", default=None, help="export folder (default: floe-export-<run id> here)")
    _common(p)


def _cmd_export(args) -> dict:
    from .export import export
    target = export(args.train_run, args.to or f"floe-export-{args.train_run}", force=args.force)
    return {"path": str(target), "files": sorted(str(p.relative_to(target))
                                                for p in target.rglob("*") if p.is_file())}


COMMANDS = {
    "train": (_train_args, _cmd_train,
              "sparse HydraLoRA fine-tuning on the top-k layers of a ranking or a layer list"),
    "search-rank": (_search_args, _cmd_search,
                    "Optuna TPE search of the adapter rank on the chosen layers"),
    "eval": (_eval_args, _cmd_eval,
             "held-out loss/perplexity and benchmark accuracy of the base model or an adapter"),
    "compare": (_compare_args, _cmd_compare,
                "layer-selection policies x layer counts x seeds, with 95 percent t-intervals (Table 2)"),
    "export": (_export_args, _cmd_export,
               "config.yaml, peft LoraConfig and adapter weights of a trained run"),
}
