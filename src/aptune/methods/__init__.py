"""The method registry: one thin class per method, declaring its facts (name, the paper's label,
default learning rate and weight decay, config section, prerequisite run) and delegating its
work to its package. Order: the paper's Table 2. Importing this loads no torch."""

from __future__ import annotations

from ..errors import AptuneError
from .apt import APT
from .base import Cost, Method, Prerequisite, PrerequisiteRun
from .cofi import CoFi, CoFiLoRA
from .ft import FullFineTuning
from .lora import LoRA
from .lora_prune import LoRAPrune

METHODS: dict[str, type[Method]] = {m.name: m for m in (FullFineTuning, LoRA, LoRAPrune, CoFi, CoFiLoRA, APT)}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise AptuneError(f"unknown method '{name}'", f"choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def get_method(name: str) -> Method:
    """A fresh instance of a method, to run once."""
    return method_class(name)()


def config_sections() -> tuple[type, ...]:
    """Each method's own config dataclass, once each, in registry order."""
    return tuple(dict.fromkeys(m.config_section for m in METHODS.values() if m.config_section))


__all__ = ["METHODS", "Cost", "Method", "Prerequisite", "PrerequisiteRun", "config_sections",
           "get_method", "method_class"]
