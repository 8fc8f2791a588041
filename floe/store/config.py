"""Config dataclasses with help text (as peft does), the option spec read from them, and
the hash that keys runs.

Each stage keeps its own dataclass beside its code. ``options_of`` turns any of them into
``Option`` records: the one source from which the CLI builds its flags and the app its
forms (help, default, choices and the parser of a typed value all come from the field).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Option", "config_hash", "option", "options_of", "to_dict"]

Kind = Literal["bool", "flag", "choice", "text"]


def option(default: Any, help: str, **metadata) -> Any:
    """A dataclass field carrying its help text (shown by ``--help`` and in the app).

    Extra metadata: ``choices`` (allowed values) and ``cli=False`` (not an option: set by
    the program, e.g. the layers a selection resolved to)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class Option:
    """One command-line option / form field.

    ``kind``: "bool" (``--x/--no-x``), "flag" (``--x`` only, off by default), "choice"
    (one of ``choices``) or "text" (typed, read by ``parse``). ``default`` is the Python
    value; ``text_default`` is the same as a user would type it. ``from_config`` options
    belong to a config dataclass: absent on the command line, they keep the class default.
    """

    dest: str
    help: str
    default: Any = None
    kind: Kind = "text"
    parse: Callable[[str], Any] | None = None
    choices: tuple = ()
    group: str = "options"
    group_help: str = ""
    required: bool = False
    from_config: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def no_flag(self) -> str | None:
        return "--no-" + self.dest.replace("_", "-") if self.kind == "bool" else None

    @property
    def text_default(self) -> str:
        if self.default is None:
            return ""
        if isinstance(self.default, (list, tuple)):
            return ",".join(str(x) for x in self.default)
        return str(self.default)

    def check(self, text: str) -> Any:
        """The typed value of ``text``; ValueError naming the option if it is not valid."""
        try:
            value = self.parse(text) if self.parse else text
        except (ValueError, TypeError) as e:
            raise ValueError(f"{self.flag}: {text!r} is not valid ({e})") from None
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.flag}: {text!r} is not one of {', '.join(map(str, self.choices))}")
        return value


def list_parser(item_type: type) -> Callable[[str], list]:
    """Comma-separated values of one type (``"4,8"`` -> ``[4, 8]``)."""
    def parse(text: str) -> list:
        return [item_type(x.strip()) for x in text.split(",") if x.strip()]
    parse.__name__ = f"list[{item_type.__name__}]"
    return parse


def _field_option(f: dataclasses.Field, hint: Any, group: str, group_help: str) -> Option:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    common = {"dest": f.name, "help": f.metadata.get("help", ""), "default": default,
              "group": group, "group_help": group_help, "from_config": True}
    if hint is bool:
        return Option(kind="bool", **common)
    if origin in (list, tuple) or any(typing.get_origin(a) in (list, tuple) for a in args):
        inner = next(a for a in (hint, *args) if typing.get_origin(a) in (list, tuple))
        return Option(kind="text", parse=list_parser(typing.get_args(inner)[0]), **common)
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    choices = tuple(f.metadata.get("choices") or ())
    return Option(kind="choice" if choices else "text", parse=base, choices=choices, **common)


def options_of(cls, skip: tuple[str, ...] = ()) -> list[Option]:
    """The options of config dataclass ``cls``, in field order (``cli=False`` fields left out)."""
    hints = typing.get_type_hints(cls)
    summary = (cls.__doc__ or "").strip().splitlines()[0]
    return [_field_option(f, hints[f.name], cls.__name__, summary) for f in dataclasses.fields(cls)
            if f.name not in skip and f.metadata.get("cli") is not False]


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def config_hash(payload: dict, length: int = 12) -> str:
    """Stable short hash of a JSON-able dict (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
