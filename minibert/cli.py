"""Command-line flags as dataclass fields: each flag's default, help text and check in one place.

train.py and generate.py declare their settings as a dataclass whose fields are made by `flag`;
`make_parser` turns it into an argparse parser whose number types refuse NaN, infinity and any
value the field's check rejects, with argparse's own error (exit status 2). The parsed namespace
holds only the flags actually given (train.py --resume needs to know which). Plumbing, no
textbook section. Left out: configuration files (a run folder's config.json records the flags).
"""

import argparse
import math
import re
from dataclasses import MISSING, field, fields


def flag(default=MISSING, help: str = "", check=None, choices=None, positional: bool = False):
    """A dataclass field that is also a command-line flag (a positional argument if asked)."""
    meta = {"help": help, "check": check, "choices": choices, "positional": positional}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# Checks: each returns None for a good value, else what is wrong with it.


def at_least(lo):
    return lambda v: None if v >= lo else f"must be at least {lo}"


def above(lo):
    return lambda v: None if v > lo else f"must be greater than {lo}"


def fraction(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


def probability(v):
    return None if 0 < v <= 1 else "must be in (0, 1]"


def suffix(v):
    return None if re.fullmatch(r"[\w-]+", v) else "must be a file suffix such as en or de"


def argument_type(base: type, check):
    """argparse type: parse as `base`, refuse NaN and infinity, then apply the check."""
    def parse(text: str):
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if base is int else 'a number'}, "
                                             f"got {text!r}") from None
        problem = "must be finite" if base is float and not math.isfinite(value) else check and check(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value
    return parse


def make_parser(settings: type, description: str) -> argparse.ArgumentParser:
    """An argparse parser for a dataclass of `flag` fields."""
    parser = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS)
    for f in fields(settings):
        meta, default = f.metadata, f.default
        shown = "" if default in (None, MISSING, "") or meta["positional"] else f" (default: {default})"
        options = {"help": meta["help"] + shown}
        if meta["positional"]:
            parser.add_argument(f.name, nargs="*", **options)
            continue
        name = "--" + f.name.replace("_", "-")
        if default is MISSING and f.default_factory is MISSING:
            options["required"] = True
        base = {int | None: int, float | None: float, str | None: str, bool | None: bool}.get(f.type, f.type)
        if base is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **options)
        elif meta["choices"]:
            parser.add_argument(name, choices=meta["choices"], **options)
        else:
            metavar = name[2:].split("-")[-1].upper() if base is str else base.__name__.upper()
            parser.add_argument(name, type=argument_type(base, meta["check"]), metavar=metavar, **options)
    return parser
