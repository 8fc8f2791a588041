"""``floe plan`` (each stage's memory before anything loads) and the plan check every
command that loads a model runs first (``--no-plan-check`` skips it)."""
from __future__ import annotations

import dataclasses

from floe.adapters.hydralora import HydraLoraConfig
from floe.cli.options import COMMON, Command, configs, flag, from_namespace, given, setup_from, text_flag
from floe.pipeline.data import DataConfig, data_config
from floe.pipeline.score import ScoreConfig
from floe.pipeline.setup import ModelConfig, Setup
from floe.pipeline.sparse import SparseConfig
from floe.pipeline.train import TrainConfig

__all__ = ["CHECKED_STAGES", "COMMANDS", "PLAN_OPTIONS", "check_command", "configs_for", "with_plan_check"]


def gib(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


DEVICE_MEMORY = text_flag("device_memory", "GiB the stages may use (default: the free memory of the "
                          "chosen device now)", parse=gib)
PLAN_OPTIONS = (flag("no_plan_check", "do not check the memory plan before loading the model"), DEVICE_MEMORY)
# The stages each command runs, checked before it loads anything.
CHECKED_STAGES = {"warmup": ("warmup",), "analyze": ("warmup", "taylor", "fisher", "tuning"),
                  "score": ("taylor", "fisher", "tuning"), "train": ("training",),
                  "search-rank": ("training",), "compare": ("training",)}


def _layer_list(args) -> tuple[list[int] | None, int]:
    """(explicit layers, k) of a plan: --layers, the top-k of --score-run, or k top layers."""
    typed = given(args)
    if typed.get("layers"):
        return list(typed["layers"]), len(typed["layers"])
    k = typed.get("k", 8)
    if typed.get("score_run"):
        from floe.pipeline.sparse import model_shape, resolve_layers
        sparse = from_namespace(SparseConfig, typed)
        return resolve_layers(sparse, model_shape(from_namespace(ModelConfig, typed)).n_layers), k
    return None, k


def _plan(args) -> dict:
    from floe.pipeline.plan import build_plan, plan_lines
    layers, k = _layer_list(args)
    plan = build_plan(setup_from(args, layers=None), from_namespace(ScoreConfig, args), layers=layers, k=k,
                      device_memory_gib=args.device_memory)
    if args.json:
        return dict(plan.to_json())
    return {"plan": "\n" + "\n".join(plan_lines(plan))}


def _warm_setup(run_id: str) -> Setup:
    """The setup a warm-up run was made with (for ``floe score``'s check)."""
    from floe.store.runs import open_run
    cfg = open_run(run_id).config
    return Setup(ModelConfig(model=cfg["model"]["model"]), data_config(cfg["data"]),
                 HydraLoraConfig(**{**cfg["adapter"], "layers": None}), TrainConfig(**cfg["train"]))


def configs_for(command: str, args) -> tuple[Setup, ScoreConfig, list[int] | None, int]:
    """(setup, score, layers, k) a command will run with."""
    typed = given(args)
    score = from_namespace(ScoreConfig, typed) if command in ("analyze", "score") else ScoreConfig()
    if command == "score":
        setup = _warm_setup(args.warmup_run)
        model = dataclasses.replace(setup.model, device=typed.get("device", "auto"),
                                    device_map=typed.get("device_map"))
        return setup.replace(model=model), score, None, 8
    if command in ("train", "search-rank", "compare"):
        from floe.cli.experiments import training_setup
        from floe.pipeline.sparse import score_run_defaults
        if command == "compare":
            defaults = score_run_defaults(args.score_run)
            typed = {"model": defaults["model"], "data": defaults["data"], **typed}
            from floe.experiments.compare import CompareConfig
            grid = from_namespace(CompareConfig, typed)
            every = 1 << 30  # the full-layer row trains every layer
            return setup_from(typed, layers=None), score, None, every if grid.include_all else max(grid.ks)
        from floe.pipeline.export import read_config
        base = read_config(args.config) if getattr(args, "config", None) else None
        setup, sparse = training_setup(args, base)
        if command == "search-rank":
            from floe.experiments.ranksearch import RankSearchConfig
            setup = setup.replace(adapter=dataclasses.replace(setup.adapter,
                                                              r=from_namespace(RankSearchConfig, typed).r_max))
        from floe.pipeline.sparse import model_shape, resolve_layers
        return setup, score, resolve_layers(sparse, model_shape(setup.model).n_layers), 8
    return setup_from(typed, layers=None), score, None, 8


def check_command(command: str, args) -> None:
    """Stop (PlanError, exit 2) before loading when a stage of ``command`` does not fit.
    Checked on CUDA, or anywhere when --device-memory is given; not with a device map
    (the plan is for one device)."""
    if getattr(args, "no_plan_check", False) or command not in CHECKED_STAGES:
        return
    from floe.models.load import resolve_device
    from floe.pipeline.plan import build_plan, check_plan
    setup, score, layers, k = configs_for(command, args)
    model = setup.model
    if model.device_map or (resolve_device(model.device).type != "cuda" and args.device_memory is None):
        return
    plan = build_plan(setup, score, layers=layers, k=k, device_memory_gib=args.device_memory)
    check_plan(plan, CHECKED_STAGES[command])


def with_plan_check(name: str, command: Command) -> Command:
    """``command`` with --no-plan-check/--device-memory, checking the plan before it runs."""
    if name not in CHECKED_STAGES:
        return command

    def run(args):
        check_command(name, args)
        return command.run(args)
    return Command(command.help, (*command.options, *PLAN_OPTIONS), run)


_PLAN_HELP = ("estimated peak memory of every stage (warm-up, Taylor, Fisher, tuning, sparse training) "
              "and what dominates it, from the model's config.json alone")
COMMANDS = {
    "plan": Command(_PLAN_HELP, (
        *configs(ModelConfig, DataConfig, HydraLoraConfig, TrainConfig, ScoreConfig),
        *configs(SparseConfig, skip=("random_seed",)),
        text_flag("layers", "the decoder layers sparse training adapts, comma-separated (default: the "
                  "top --k layers, or the top-k of --score-run)",
                  parse=lambda t: [int(x) for x in t.split(",") if x.strip()]),
        DEVICE_MEMORY, COMMON[0]), _plan),
}
