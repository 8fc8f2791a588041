"""The ``floe`` command line: one subcommand per stage, options from the config dataclasses."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import add_arguments, from_namespace
from .data import DataConfig
from .hydralora import HydraLoraConfig
from .train import TrainConfig
from .warmup import ModelConfig

EXIT_USAGE = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary")
    parser.add_argument("--force", action="store_true",
                        help="recompute even if a finished run with the same config exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", default=None,
                        help="folder holding the runs (default: $FLOE_CACHE or the project's cache/)")


def _warmup_args(p: argparse.ArgumentParser) -> None:
    add_arguments(p, ModelConfig)
    add_arguments(p, DataConfig)
    add_arguments(p, HydraLoraConfig)
    add_arguments(p, TrainConfig)
    _common(p)


def _cmd_warmup(args) -> dict:
    from .warmup import SUMMARY, run_warmup
    run = run_warmup(from_namespace(ModelConfig, args), from_namespace(DataConfig, args),
                     from_namespace(HydraLoraConfig, args), from_namespace(TrainConfig, args),
                     force=args.force, show_progress=not args.quiet)
    return {"run": run.id, "path": str(run.path), **run.read_json(SUMMARY)}


def _score_args(p: argparse.ArgumentParser) -> None:
    from .score import ScoreConfig
    p.add_argument("--warmup-run", required=True, help="id of a finished warm-up run in the cache")
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto (CUDA when present)")
    add_arguments(p, ScoreConfig)
    _common(p)


def _cmd_score(args) -> dict:
    from .runs import open_run
    from .score import ScoreConfig, run_score, summary
    warm = open_run(args.warmup_run)
    if warm.kind != "warmup":
        raise ValueError(f"run {args.warmup_run} is a {warm.kind} run, not a warm-up run")
    return summary(run_score(warm, from_namespace(ScoreConfig, args), args.device,
                             force=args.force, show_progress=not args.quiet))


def _ratios(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ratios takes numbers like 1.0,0.7,0.3, got {text!r}")


def _analyze_args(p: argparse.ArgumentParser) -> None:
    from .score import ScoreConfig
    _warmup_args(p)
    add_arguments(p, ScoreConfig)
    p.add_argument("--ratios", type=_ratios, default=None,
                   help="data-ratio stability study: one warm-up and scoring per ratio, e.g. 1.0,0.7,0.3")


def _cmd_analyze(args) -> dict:
    from .runs import open_run
    from .score import ScoreConfig, run_analysis, run_study, summary
    configs = (from_namespace(ModelConfig, args), from_namespace(DataConfig, args),
               from_namespace(HydraLoraConfig, args), from_namespace(TrainConfig, args),
               from_namespace(ScoreConfig, args))
    if args.ratios is None:
        return summary(run_analysis(*configs, force=args.force, show_progress=not args.quiet))
    study = run_study(*configs, ratios=args.ratios, force=args.force, show_progress=not args.quiet)
    stability = study.read_json("stability.json")
    per_ratio = {r: summary(open_run(i)) for r, i in stability["score_runs"].items()}
    return {"run": study.id, "path": str(study.path), **stability, "per_ratio": per_ratio,
            "layer_scores": {r: s["layer_scores"] for r, s in per_ratio.items()}}


COMMANDS = {
    "warmup": (_warmup_args, _cmd_warmup,
               "fine-tune a full-layer HydraLoRA model on a sample of the data"),
    "score": (_score_args, _cmd_score, "FLoE-score the layers of a finished warm-up"),
    "analyze": (_analyze_args, _cmd_analyze,
                "warm-up + scoring in one go (with --ratios: the data-ratio stability study)"),
}

from .cli_experiments import COMMANDS as _EXPERIMENT_COMMANDS  # noqa: E402 (needs _common above)

COMMANDS.update(_EXPERIMENT_COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floe", description="FLoE: which layers to adapt, and at what rank. Results go "
        "to cache/ (or $FLOE_CACHE), one folder per run keyed by its config.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, _, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "out", None):
        os.environ["FLOE_CACHE"] = os.path.abspath(args.out)
    try:
        result = COMMANDS[args.command][1](args)
    except (ValueError, OSError, RuntimeError) as e:
        # Errors the user can fix (bad options, data, paths, permissions, a full disk, a
        # locked or corrupt run) get one clear line, not a traceback. DataError is a ValueError.
        if os.environ.get("FLOE_DEBUG"):
            raise
        print(f"floe {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"floe {args.command}: cancelled; run it again to resume", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, default=str))
    else:
        for key, value in result.items():
            if not isinstance(value, (list, dict)):
                print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
