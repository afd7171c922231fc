"""Method registry: one file per method, each a thin composition of shared pieces."""

from __future__ import annotations

from ..errors import AptuneError
from .base import Method
from .ft import FullFineTuning
from .apt import APT
from .lora import LoRA
from .cofi import CoFi, CoFiLoRA
from .lora_prune import LoRAPrune

METHODS: dict[str, type[Method]] = {"ft": FullFineTuning, "lora": LoRA, "apt": APT,
                                    "lora-prune": LoRAPrune, "cofi": CoFi, "cofi-lora": CoFiLoRA}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise AptuneError(f"unknown method '{name}'", f"choose one of: {', '.join(METHODS)}")
    return METHODS[name]()


__all__ = ["METHODS", "Method", "get_method"]
