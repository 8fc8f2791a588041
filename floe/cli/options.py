"""The argparse bridge: flags from ``Option`` records, and config dataclasses back from the
parsed values. The options themselves come from the configs (floe.store.config.options_of)
plus the few CLI-only flags defined here."""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from floe.store.config import Option, options_of

__all__ = ["COMMON", "POSITIONAL", "Command", "add_options", "configs", "flag", "from_namespace", "given",
           "help_text", "positional", "setup_from", "text_flag"]

POSITIONAL = "positional arguments"


def flag(dest: str, help: str) -> Option:
    """A CLI-only on/off switch (``--json``)."""
    return Option(dest=dest, help=help, default=False, kind="flag")


def text_flag(dest: str, help: str, default=None, parse=None, required: bool = False) -> Option:
    """A CLI-only option taking a value."""
    return Option(dest=dest, help=help, default=default, parse=parse, required=required)


def positional(dest: str, help: str, choices: tuple = (), many: bool = False) -> Option:
    """A CLI-only positional argument (``floe runs gc``); ``many``: any number of values."""
    return Option(dest=dest, help=help, default=[] if many else None, choices=tuple(choices),
                  kind="choice" if choices else "text", group=POSITIONAL)


COMMON = [flag("json", "print a machine-readable summary"),
          flag("force", "recompute even if a finished run with the same config exists"),
          flag("quiet", "no progress bars"),
          text_flag("out", "folder holding the runs (default: $FLOE_CACHE or the project's cache/)")]


def configs(*classes, skip: tuple[str, ...] = ()) -> list[Option]:
    """The options of several config dataclasses, in order."""
    return [opt for cls in classes for opt in options_of(cls, skip)]


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its options (config options and CLI-only flags) and what it runs."""

    help: str
    options: tuple[Option, ...]
    run: Callable[[argparse.Namespace], dict]

    def __post_init__(self):
        # A name shared by two configs (e.g. seed) is one option setting both.
        unique: dict[str, Option] = {}
        for opt in self.options:
            unique.setdefault(opt.dest, opt)
        object.__setattr__(self, "options", tuple(unique.values()))


def help_text(opt: Option) -> str:
    """``opt``'s help with its default said once: the one its text writes, else its value;
    none for no value (None), an off-by-default flag or a required option."""
    text = opt.help
    if not ("(default:" in text or opt.kind == "flag" or opt.default is None or opt.required):
        text += f" (default: {opt.text_default})"
    if opt.item_type is not None:
        text += "; comma-separated"
    return text.replace("%", "%%")  # argparse %-formats help


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """One argparse option per Option, its help saying its default (help_text). Config
    options default to SUPPRESS: absent, they keep the class default."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in options:
        if opt.group == POSITIONAL:
            many = isinstance(opt.default, list)
            default: dict[str, Any] = {"default": []} if many else {}
            parser.add_argument(opt.dest, help=help_text(opt), choices=opt.choices or None,
                                nargs="*" if many else None, **default)
            continue
        if not opt.from_config:
            if opt.kind == "flag":
                parser.add_argument(opt.flag, action="store_true", help=help_text(opt))
            else:
                # typeshed leaves out type=None, argparse's own default (no conversion)
                parser.add_argument(opt.flag, type=opt.parse, default=opt.default,  # type: ignore[arg-type]
                                    required=opt.required, help=help_text(opt))
            continue
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group, opt.group_help)
        group = groups[opt.group]
        if opt.kind == "bool":
            group.add_argument(opt.flag, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text(opt))
        else:
            group.add_argument(opt.flag, type=opt.parse, default=argparse.SUPPRESS,  # type: ignore[arg-type]  # as above
                               help=help_text(opt), choices=opt.choices or None)


def from_namespace(cls, namespace: argparse.Namespace | dict, **overrides):
    """Build ``cls`` from parsed options; absent options keep the class defaults."""
    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in values.items() if k in names}
    kwargs.update(overrides)
    return cls(**kwargs)


def setup_from(namespace: argparse.Namespace | dict, **adapter):
    """The four configs of a run (a ``Setup``) from parsed options; ``adapter`` overrides
    the adapter's (``layers=None``: the command chooses the layers)."""
    from floe.adapters.hydralora import HydraLoraConfig
    from floe.pipeline.data import DataConfig
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.train import TrainConfig
    return Setup(from_namespace(ModelConfig, namespace), from_namespace(DataConfig, namespace),
                 from_namespace(HydraLoraConfig, namespace, **adapter), from_namespace(TrainConfig, namespace))


def given(args) -> dict:
    """Only the options the user typed (config options default to SUPPRESS, others to None)."""
    return {k: v for k, v in vars(args).items() if v is not None}
