"""The app's option forms: the options of a ``floe`` command (the CLI's own spec,
floe.cli.command_options) and the arguments that carry a form's changed values."""
from __future__ import annotations

from floe.cli import command_options
from floe.store.config import Option

__all__ = ["FORM_SKIP", "cli_args", "form_options", "is_switch"]

# Set by the page itself (model and data pickers) or meaningless in a background job.
FORM_SKIP = ("model", "data", "json", "quiet", "out")


def form_options(command: str, skip: tuple[str, ...] = ()) -> list[Option]:
    """The options of ``floe <command>`` a form shows, in ``--help`` order: the general
    ones first, then one group per config."""
    shown = [o for o in command_options(command) if o.dest not in FORM_SKIP + skip]
    return sorted(shown, key=lambda o: o.from_config)


def is_switch(opt: Option) -> bool:
    return opt.kind in ("bool", "flag")


def cli_args(options: list[Option], values: dict) -> list[str]:
    """The arguments for the values that differ from the defaults; raises ValueError with
    the option's name for a value the CLI would reject."""
    args = []
    for opt in options:
        default = bool(opt.default) if is_switch(opt) else opt.text_default
        value = values.get(opt.dest, default)
        if value == default or (not is_switch(opt) and str(value).strip() == ""):
            continue
        if is_switch(opt):
            args.append(opt.flag if value else opt.no_flag or "")
            continue
        value = str(value).strip()
        opt.check(value)
        args += [opt.flag, value]
    return [a for a in args if a]
