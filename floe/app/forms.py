"""The app's option forms: the options of a ``floe`` command (the CLI's own spec,
floe.cli.command_options) and the arguments that carry a form's changed values."""
from __future__ import annotations

import os

from floe.cli import command_options
from floe.store.config import Option

__all__ = ["FORM_SKIP", "GROUP_TITLES", "REMOTE_CODE_ENV", "check_preset", "cli_args", "form_options",
           "group_title", "is_switch", "remote_code_allowed"]

# Set by the page itself (model and data pickers) or meaningless in a background job.
FORM_SKIP = ("model", "data", "json", "quiet", "out")
REMOTE_CODE_ENV = "FLOE_ALLOW_REMOTE_CODE"
# A form group's header: the config class an option comes from, in words.
GROUP_TITLES = {"options": "general", "positional arguments": "general", "ModelConfig": "model",
                "DataConfig": "data", "HydraLoraConfig": "adapter (HydraLoRA)", "TrainConfig": "training",
                "SparseConfig": "layer choice", "ScoreConfig": "scoring", "ProbeConfig": "probe",
                "CompareConfig": "comparison", "EvalConfig": "evaluation", "RankSearchConfig": "rank search",
                "TrackConfig": "experiment tracking", "GenerateConfig": "generation"}


def remote_code_allowed() -> bool:
    """Whoever started the server allowed models' own Python code (``scripts/app.sh
    --allow-remote-code``); a browser alone never can: the app has no login."""
    return os.environ.get(REMOTE_CODE_ENV, "") == "1"


def form_options(command: str, skip: tuple[str, ...] = ()) -> list[Option]:
    """The options of ``floe <command>`` a form shows, in ``--help`` order: the general
    ones first, then one group per config (trust_remote_code only where the server allows it)."""
    hidden = FORM_SKIP + skip + (() if remote_code_allowed() else ("trust_remote_code",))
    shown = [o for o in command_options(command) if o.dest not in hidden]
    return sorted(shown, key=lambda o: o.from_config)


def group_title(group: str) -> str:
    """A form group's header in words: "HydraLoraConfig" -> "adapter (HydraLoRA)"; a config
    class not listed -> its name without "Config", split into lower-case words."""
    import re
    if group in GROUP_TITLES:
        return GROUP_TITLES[group]
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", group.removesuffix("Config"))
    return " ".join(w.lower() for w in words) or group


def check_preset(command: str, preset: dict) -> None:
    """ValueError naming the keys of ``preset`` that are no option of ``floe <command>``
    (a typo would otherwise be a value silently never shown nor passed)."""
    valid = [o.dest for o in command_options(command)]
    unknown = sorted(set(preset) - set(valid))
    if unknown:
        raise ValueError(f"preset for floe {command}: unknown option(s) {', '.join(unknown)}; "
                         f"its options are {', '.join(sorted(valid))}")


def is_switch(opt: Option) -> bool:
    return opt.kind in ("bool", "flag")


def cli_args(options: list[Option], values: dict, keep: tuple[str, ...] = ()) -> list[str]:
    """The arguments for the values that differ from the defaults (and for the options in
    ``keep`` whatever their value: where the command's own defaults are not the parser's, as
    ``floe probe``'s budget); raises ValueError with the option's name for a value the CLI
    would reject."""
    args = []
    for opt in options:
        default = bool(opt.default) if is_switch(opt) else opt.text_default
        value = values.get(opt.dest, default)
        kept = opt.dest in keep and opt.dest in values and not is_switch(opt)
        if (value == default and not kept) or (not is_switch(opt) and str(value).strip() == ""):
            continue
        if is_switch(opt):
            args.append(opt.flag if value else opt.no_flag or "")
            continue
        value = str(value).strip()
        opt.check(value)
        args += [opt.flag, value]
    return [a for a in args if a]
