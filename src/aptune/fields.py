"""Dataclass fields with help text, and choice fields typed with `Literal`.

A config field is declared once, `name: Literal["a", "b"] = option("a", "help")`, and that one
list of choices is what validation checks and what `aptune train --help` shows. Nothing heavy is
imported here: configs must load without torch.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal, get_args, get_origin

from .errors import AptuneError


def option(default: Any, help: str, panel: str | None = None) -> Any:
    """A dataclass field with a default and the help text that `--help` prints (in `panel`, or in
    its config section's panel)."""
    metadata = {"help": help, **({"panel": panel} if panel else {})}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
    """The command-line flag of a config field: `max_rank` -> `--max-rank`."""
    return "--" + name.replace("_", "-")


def field_help(cls: type, name: str) -> str:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[name]


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (its fields' types, `Literal`s included); resolved
    once per class, since every config validation reads them."""
    return typing.get_type_hints(cls)


def choices(annotation: Any) -> tuple | None:
    """The allowed values of a `Literal[...]` (or `Literal[...] | None`) annotation, else None."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):  # Optional[Literal[...]]
        if get_origin(arg) is Literal:
            return get_args(arg)
    return None


def check_choices(config: Any, section: type | None = None) -> None:
    """Refuse a value outside its field's `Literal` choices, naming the flag and the choices.
    With `section`, only that dataclass's fields (each config section checks its own)."""
    for name, annotation in field_types(section or type(config)).items():
        allowed = choices(annotation)
        value = getattr(config, name, None)
        if allowed is None or value is None or value in allowed:
            continue
        listed = ", ".join(str(a) for a in allowed)
        raise AptuneError(f"{flag(name)} must be one of {listed}, got {value!r}", f"pick one of {listed}")


def check_positive(config: Any, names: tuple[str, ...], allow_zero: bool = False) -> None:
    """Refuse a field that is not > 0 (or >= 0 with `allow_zero`), or a fraction where the field is
    an int; None means 'not set'."""
    types = field_types(type(config))
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if "int" in str(types.get(name)) and not float(value).is_integer():
            raise AptuneError(f"{flag(name)} must be a whole number, got {value}",
                              f"pass a whole number to {flag(name)}")
        if not (value >= 0 if allow_zero else value > 0):
            bound, fix = (">= 0", "non-negative") if allow_zero else ("positive", "positive")
            raise AptuneError(f"{flag(name)} must be {bound}, got {value}", f"pass a {fix} {flag(name)}")
