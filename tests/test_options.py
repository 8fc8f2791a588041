"""The option spec read from the config dataclasses: list options recognised by their type,
Literal choices, each default said once in ``--help``, and presets checked against it."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Literal

import pytest

from floe.app import forms
from floe.app import widgets as ui
from floe.cli import COMMANDS, build_parser
from floe.experiments.probe import MODES, SCHEDULES, ProbeConfig
from floe.pipeline.trackers import REPORT_TO, TrackConfig
from floe.store.config import option, options_of

Colour = Literal["red", "green"]


@dataclasses.dataclass
class _Example:
    """An example config."""

    ints: list[int] = option([1], "integers")
    words: list[str] = option(["a"], "words")
    maybe: list[int] | None = option(None, "integers or nothing")
    scales: tuple[float, ...] = option((0.5,), "scales")
    colour: Colour = option("red", "a colour")
    named: list[str] = option([], "a list whose parser has another name")


def _by_dest(cls) -> dict:
    return {o.dest: o for o in options_of(cls)}


def test_list_options_are_recognised_by_their_type():
    opts = _by_dest(_Example)
    assert opts["ints"].check("1,2") == [1, 2] and opts["ints"].item_type is int
    assert opts["words"].check("1, b") == ["1", "b"]
    assert opts["maybe"].check("3,4") == [3, 4] and opts["maybe"].item_type is int
    assert opts["scales"].check("0.25") == [0.25]
    assert opts["colour"].item_type is None
    with pytest.raises(ValueError, match="--ints"):
        opts["ints"].check("1,x")
    # The CLI takes the list by the type, whatever its parser is called.
    named = dataclasses.replace(opts["named"], parse=lambda text: text.split(","))
    parser = argparse.ArgumentParser()
    from floe.cli.options import add_options
    add_options(parser, [opts["ints"], opts["maybe"], named])
    args = parser.parse_args(["--ints", "1,2", "--maybe", "5", "--named", "x,y"])
    assert args.ints == [1, 2] and args.maybe == [5] and args.named == ["x", "y"]
    assert all("comma-separated" in a.help for a in parser._actions if a.dest in ("ints", "maybe", "named"))


def test_literal_fields_give_the_choices():
    opts = _by_dest(_Example)
    assert opts["colour"].kind == "choice" and opts["colour"].choices == ("red", "green")
    with pytest.raises(ValueError, match="not one of red, green"):
        opts["colour"].check("blue")
    probe = _by_dest(ProbeConfig)
    assert probe["mode"].choices == MODES == ("single", "leave-one-out")
    assert probe["schedule"].choices == SCHEDULES == ("cells", "halving", "joint")
    assert _by_dest(TrackConfig)["report_to"].choices == REPORT_TO == ("none", "tensorboard", "wandb")
    with pytest.raises(ValueError, match="unknown tracker"):
        TrackConfig("tensorbored")


def test_a_literal_field_takes_no_second_list_of_choices():
    @dataclasses.dataclass
    class Twice:
        """Twice."""

        colour: Colour = option("red", "a colour", choices=("red", "green"))
    with pytest.raises(TypeError, match="Literal"):
        options_of(Twice)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_each_help_says_its_default_once():
    parser = build_parser()
    for name, sub in _subparsers(parser).items():
        for action in sub._actions:
            assert (action.help or "").count("(default:") <= 1, f"floe {name} {action.option_strings}: {action.help}"
    analyze = _subparsers(parser)["analyze"]
    helps = {a.dest: a.help for a in analyze._actions}
    assert helps["out"] == "folder holding the runs (default: $FLOE_CACHE or the project's cache/)"
    assert helps["ratios"].endswith("e.g. 1.0,0.7,0.3")  # no value: no default said
    assert helps["max_samples"].endswith("(default: 64)")
    assert helps["targets"].endswith("(default: gate,up,down); comma-separated")
    assert "(default:" not in helps["json"]  # an off-by-default flag
    text = analyze.format_help()
    assert "(default: None)" not in text and "(default: False)" in text  # --fill/--no-fill is off


def test_an_unknown_preset_key_is_an_error():
    with pytest.raises(ValueError, match=r"unknown option\(s\) limt; its options are .*\blimit\b"):
        forms.check_preset("eval", {"limt": "5", "tasks": "arc-easy"})
    with pytest.raises(ValueError, match="limt"):
        ui.option_widgets("eval", {"limt": "5"})  # before any widget is drawn
    forms.check_preset("eval", ui.QUICK_EVAL)
    forms.check_preset("analyze", ui.QUICK)
    assert set(COMMANDS) >= {"eval", "analyze"}
