"""The memory plan shown next to every launch button: the stages the command will run,
each stage's estimated peak against the device's free memory (floe.pipeline.plan, the
formula ``floe plan`` prints and the commands check before loading)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["launch_plan"]


def _model_here(model: str) -> bool:
    """Planning reads config.json: an embedded model only after its first conversion (the
    plan must not start a conversion on a page rerun)."""
    from floe.models.load import EMBEDDED
    from floe.store.runs import cache_root
    folder = cache_root() / "models" / model if model in EMBEDDED else Path(model).expanduser()
    return (folder / "config.json").is_file()


def launch_plan(args: list[str]) -> dict | None:
    """{"lines": [...], "fits": bool, "problem": str | None} for ``floe <args>``; None for a
    command that loads no model for training or scoring, or a model not on this machine."""
    import argparse

    from floe.cli import build_parser
    from floe.cli.plan import CHECKED_STAGES, configs_for
    from floe.pipeline.plan import LABELS, PlanError, build_plan, check_plan
    if not args or args[0] not in CHECKED_STAGES:
        return None
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit:  # an invalid form value: the launcher reports it
        return None
    try:
        setup, score, layers, k = configs_for(args[0], parsed)
        if not _model_here(setup.model.model):
            return None
        plan = build_plan(setup, score, layers=layers, k=k, device_memory_gib=parsed.device_memory)
    except (ValueError, OSError, KeyError, argparse.ArgumentError) as e:
        return {"lines": [], "fits": True, "problem": f"no memory plan: {e}"}
    stages = CHECKED_STAGES[args[0]]
    free = "" if plan.device_memory_gib is None else f" of {plan.device_memory_gib:.1f} GiB free"
    lines = [f"{LABELS[s]} {plan.stages[s].peak_gib:.2f} GiB ({plan.stages[s].dominant})"
             + ("" if plan.fits(s) else " – does not fit") for s in stages]
    problem = None
    try:
        check_plan(plan, stages)
    except PlanError as e:
        problem = str(e)
    return {"lines": [f"Memory plan on {plan.device}{free}: " + " · ".join(lines)],
            "fits": problem is None, "problem": problem}
