"""Config dataclasses with help text (as peft does), and their argparse bridge.

Each stage keeps its own dataclass beside its code; this module only knows how to turn
any of them into command-line options and back, and how to hash them for run keys.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import typing
from typing import Any


def option(default: Any, help: str, **metadata) -> Any:
    """A dataclass field carrying its help text (shown by ``--help`` and in the app)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one option per field of dataclass ``cls`` (defaults come from the class)."""
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        if _flag(f.name) in parser._option_string_actions:
            continue  # a name shared by two configs (e.g. seed) is one option setting both
        kind = hints[f.name]
        origin = typing.get_origin(kind)
        args = typing.get_args(kind)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if kind is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        elif origin in (list, tuple):
            group.add_argument(_flag(f.name), type=_list_parser(args[0]),
                               default=argparse.SUPPRESS, help=help_text + "; comma-separated")
        else:
            base = next((a for a in args if a is not type(None)), kind) if args else kind
            group.add_argument(_flag(f.name), type=base, default=argparse.SUPPRESS,
                               help=help_text, choices=f.metadata.get("choices"))


def _list_parser(item_type):
    def parse(text: str):
        return [item_type(x.strip()) for x in text.split(",") if x.strip()]
    parse.__name__ = f"list[{item_type.__name__}]"
    return parse


def from_namespace(cls, namespace: argparse.Namespace | dict, **overrides):
    """Build ``cls`` from parsed options; absent options keep the class defaults."""
    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in values.items() if k in names}
    kwargs.update(overrides)
    obj = cls(**kwargs)
    return obj


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def config_hash(payload: dict, length: int = 12) -> str:
    """Stable short hash of a JSON-able dict (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
