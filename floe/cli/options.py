"""The argparse bridge: flags from ``Option`` records, and config dataclasses back from the
parsed values. The options themselves come from the configs (floe.store.config.options_of)
plus the few CLI-only flags defined here."""
from __future__ import annotations

import argparse
import dataclasses

from floe.store.config import Option, options_of

__all__ = ["COMMON", "POSITIONAL", "Command", "add_options", "configs", "flag", "from_namespace", "given",
           "positional", "text_flag"]

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
    run: object  # Callable[[argparse.Namespace], dict]

    def __post_init__(self):
        # A name shared by two configs (e.g. seed) is one option setting both.
        unique = {}
        for opt in self.options:
            unique.setdefault(opt.dest, opt)
        object.__setattr__(self, "options", tuple(unique.values()))


def add_options(parser: argparse.ArgumentParser, options: list[Option]) -> None:
    """One argparse option per Option. Config options default to SUPPRESS (absent means
    the class default) and show that default in their help."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in options:
        if opt.group == POSITIONAL:
            many = isinstance(opt.default, list)
            parser.add_argument(opt.dest, help=opt.help, choices=opt.choices or None,
                                nargs="*" if many else None, **({"default": []} if many else {}))
            continue
        if not opt.from_config:
            if opt.kind == "flag":
                parser.add_argument(opt.flag, action="store_true", help=opt.help)
            else:
                parser.add_argument(opt.flag, type=opt.parse, default=opt.default,
                                    required=opt.required, help=opt.help)
            continue
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group, opt.group_help)
        group = groups[opt.group]
        help_text = f"{opt.help} (default: {opt.default})"
        if opt.kind == "bool":
            group.add_argument(opt.flag, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        elif isinstance(opt.default, list) or getattr(opt.parse, "__name__", "").startswith("list["):
            group.add_argument(opt.flag, type=opt.parse, default=argparse.SUPPRESS,
                               help=help_text + "; comma-separated")
        else:
            group.add_argument(opt.flag, type=opt.parse, default=argparse.SUPPRESS,
                               help=help_text, choices=opt.choices or None)


def from_namespace(cls, namespace: argparse.Namespace | dict, **overrides):
    """Build ``cls`` from parsed options; absent options keep the class defaults."""
    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in values.items() if k in names}
    kwargs.update(overrides)
    return cls(**kwargs)


def given(args) -> dict:
    """Only the options the user typed (config options default to SUPPRESS, others to None)."""
    return {k: v for k, v in vars(args).items() if v is not None}
