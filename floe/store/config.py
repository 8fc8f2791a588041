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
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["LIST_ITEM_TYPES", "Option", "config_hash", "list_item_type", "list_parser", "literal_choices",
           "option", "options_of", "to_dict"]

Kind = Literal["bool", "flag", "choice", "text"]
LIST_ITEM_TYPES = (int, float, str)  # the element types a comma-separated list option parses


def option(default: Any, help: str, **metadata) -> Any:
    """A dataclass field carrying its help text (shown by ``--help`` and in the app).

    A fixed set of values is the field's type, ``Literal[...]``: its choices come from it.
    Extra metadata: ``choices`` (allowed values known only at run time, e.g. the registered
    policies) and ``cli=False`` (not an option: set by the program, e.g. the layers a
    selection resolved to)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class Option:
    """One command-line option / form field.

    ``kind``: "bool" (``--x/--no-x``), "flag" (``--x`` only, off by default), "choice"
    (one of ``choices``) or "text" (typed, read by ``parse``). ``item_type``: the element
    type of a comma-separated list (``list[int]``: int), None for a single value.
    ``default`` is the Python value; ``text_default`` is the same as a user would type it.
    ``from_config`` options belong to a config dataclass: absent on the command line, they
    keep the class default.
    """

    dest: str
    help: str
    default: Any = None
    kind: Kind = "text"
    parse: Callable[[str], Any] | None = None
    choices: tuple = ()
    item_type: type | None = None
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
    if item_type not in LIST_ITEM_TYPES:
        raise TypeError(f"a list option holds {', '.join(t.__name__ for t in LIST_ITEM_TYPES)}, "
                        f"not {item_type!r}")

    def parse(text: str) -> list:
        return [item_type(x.strip()) for x in text.split(",") if x.strip()]
    parse.__name__ = f"list[{item_type.__name__}]"
    return parse


def _value_type(hint: Any) -> Any:
    """The type of a field's value: ``X`` of ``X | None`` (Optional[X]), else the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return hint


def list_item_type(hint: Any) -> type | None:
    """The element type of a list annotation (``list[int]``, ``list[str] | None``,
    ``tuple[float, ...]``), None for any other annotation."""
    hint = _value_type(hint)
    if typing.get_origin(hint) in (list, tuple):
        return typing.get_args(hint)[0]
    return None


def literal_choices(hint: Any) -> tuple:
    """The values of a ``Literal[...]`` annotation (also ``Literal[...] | None``), () otherwise."""
    hint = _value_type(hint)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _field_option(f: dataclasses.Field, hint: Any, group: str, group_help: str) -> Option:
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        raise TypeError(f"config field {f.name!r} has no default")
    common = {"dest": f.name, "help": f.metadata.get("help", ""), "default": default,
              "group": group, "group_help": group_help, "from_config": True}
    if hint is bool:
        return Option(kind="bool", **common)
    item_type = list_item_type(hint)
    if item_type is not None:
        return Option(kind="text", parse=list_parser(item_type), item_type=item_type, **common)
    choices = literal_choices(hint)
    if choices and "choices" in f.metadata:
        raise TypeError(f"{f.name}: its Literal type gives its choices; drop choices=")
    if choices:
        return Option(kind="choice", parse=type(choices[0]), choices=choices, **common)
    choices = tuple(f.metadata.get("choices") or ())
    return Option(kind="choice" if choices else "text", parse=_value_type(hint), choices=choices, **common)


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
