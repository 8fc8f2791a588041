"""CLI commands up to the layer ranking: warmup, score, analyze (and the stability study)."""
from __future__ import annotations

import argparse

from floe.adapters.hydralora import HydraLoraConfig
from floe.cli.options import COMMON, Command, configs, from_namespace, setup_from, text_flag
from floe.pipeline.data import DataConfig
from floe.pipeline.score import ScoreConfig
from floe.pipeline.setup import ModelConfig
from floe.pipeline.trackers import TrackConfig
from floe.pipeline.train import TrainConfig

__all__ = ["COMMANDS"]


def _warmup(args) -> dict:
    from floe.pipeline.warmup import SUMMARY, run_warmup
    run = run_warmup(setup_from(args), force=args.force, show_progress=not args.quiet)
    return {"run": run.id, "path": str(run.path), **run.read_json(SUMMARY)}


def _score(args) -> dict:
    from floe.pipeline.score import run_score, summary
    from floe.store.runs import open_run
    warm = open_run(args.warmup_run)
    if warm.kind != "warmup":
        raise ValueError(f"run {args.warmup_run} is a {warm.kind} run, not a warm-up run")
    return summary(run_score(warm, from_namespace(ScoreConfig, args), args.device,
                             force=args.force, show_progress=not args.quiet,
                             device_map=args.device_map))


def ratios(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ratios takes numbers like 1.0,0.7,0.3, got {text!r}") from None


def _analyze(args) -> dict:
    from floe.experiments.study import run_analysis, run_study
    from floe.pipeline.score import summary
    from floe.store.runs import open_run
    setup, score = setup_from(args), from_namespace(ScoreConfig, args)
    if args.ratios is None:
        return summary(run_analysis(setup, score, force=args.force, show_progress=not args.quiet))
    study = run_study(setup, score, ratios=args.ratios, force=args.force, show_progress=not args.quiet)
    from floe.experiments.study import load_stability
    stability = load_stability(study)
    per_ratio = {r: summary(open_run(i)) for r, i in stability["score_runs"].items()}
    return {"run": study.id, "path": str(study.path), **stability, "per_ratio": per_ratio,
            "layer_scores": {r: s["layer_scores"] for r, s in per_ratio.items()}}


_WARMUP = configs(ModelConfig, DataConfig, HydraLoraConfig, TrainConfig, TrackConfig)
COMMANDS = {
    "warmup": Command("fine-tune a full-layer HydraLoRA model on a sample of the data",
                      (*_WARMUP, *COMMON), _warmup),
    "score": Command("FLoE-score the layers of a finished warm-up",
                     (text_flag("warmup_run", "id of a finished warm-up run in the cache", required=True),
                      text_flag("device", "cuda, cpu, or auto (CUDA when present)", default="auto"),
                      text_flag("device_map", "auto, balanced, sequential or a JSON map: spread the "
                                "model over several GPUs or offload layers (docs/plan.md)"),
                      *configs(ScoreConfig), *COMMON), _score),
    "analyze": Command("warm-up + scoring in one go (with --ratios: the data-ratio stability study)",
                       (*_WARMUP, *COMMON, *configs(ScoreConfig),
                        text_flag("ratios", "data-ratio stability study: one warm-up and scoring per "
                                  "ratio, e.g. 1.0,0.7,0.3", parse=ratios)), _analyze),
}
