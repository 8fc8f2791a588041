"""The ``floe`` command line: one subcommand per stage, its options generated from the
stages' config dataclasses (floe.store.config.options_of) plus a few CLI-only flags.

``command_options`` is also what the app's forms are built from, so the two never drift.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from floe.cli.analysis import COMMANDS as _ANALYSIS
from floe.cli.experiments import COMMANDS as _EXPERIMENTS
from floe.cli.options import Command, add_options
from floe.cli.plan import COMMANDS as _PLAN
from floe.cli.plan import with_plan_check
from floe.cli.probe import COMMANDS as _PROBE
from floe.cli.runs import COMMANDS as _RUNS
from floe.pipeline.trackers import TrackConfig, tracking
from floe.store.config import Option

__all__ = ["COMMANDS", "build_parser", "command_options", "main"]

EXIT_USAGE = 2
# Commands that load a model check the memory plan first (floe.cli.plan).
COMMANDS: dict[str, Command] = {name: with_plan_check(name, command) for name, command in
                                {**_ANALYSIS, **_EXPERIMENTS, **_PROBE, **_PLAN, **_RUNS}.items()}


def command_options(name: str) -> list[Option]:
    """The options of ``floe <name>`` in ``--help`` order."""
    return list(COMMANDS[name].options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floe", description="FLoE: which layers to adapt, and at what rank. Results go "
        "to cache/ (or $FLOE_CACHE), one folder per run keyed by its config.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        # Each option's help says its default once (floe.cli.options.help_text).
        add_options(sub.add_parser(name, help=command.help, description=command.help), command.options)
    return parser


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"floe: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    formatwarning, warnings.formatwarning = warnings.formatwarning, _warning_line  # one line each
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = formatwarning


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "out", None):
        os.environ["FLOE_CACHE"] = os.path.abspath(args.out)
    if getattr(args, "quiet", False):  # transformers' own bars too ("Loading weights")
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    try:
        with tracking(TrackConfig(getattr(args, "report_to", "none"))):
            result = COMMANDS[args.command].run(args)
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
        text = json.dumps(result, indent=2, default=str)
    else:
        text = "\n".join(f"{key}: {value}" for key, value in result.items()
                         if not isinstance(value, (list, dict)))
    # One write: the processes of a DDP run share stdout, and print's separate writes of
    # text and newline interleave between them (seen as "run: train-...rank: 1").
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return 0
