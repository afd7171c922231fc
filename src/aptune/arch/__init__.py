"""Architecture specs: the only model-family-specific code in aptune."""

from __future__ import annotations

from ..errors import AptuneError
from .base import ArchSpec, AttentionParts, FFNParts, SkippedSublayer
from .bert import BertSpec
from .shape import ModelShape

_SPECS: list[ArchSpec] = [BertSpec()]


def register_spec(spec: ArchSpec) -> None:
    """Add a family (tests use this for a model with renamed modules); later ones win."""
    _SPECS.insert(0, spec)


def unregister_spec(spec: ArchSpec) -> None:
    _SPECS.remove(spec)


def supported_model_types() -> list[str]:
    return sorted({t for spec in _SPECS for t in spec.model_types})


def spec_for_model_type(model_type: str) -> ArchSpec:
    for spec in _SPECS:
        if model_type in spec.model_types:
            return spec
    raise AptuneError(
        f"model family '{model_type}' is not supported yet",
        f"use a model whose config.model_type is one of: {', '.join(supported_model_types())}",
    )


def get_spec(model) -> ArchSpec:
    return spec_for_model_type(model.config.model_type)


__all__ = ["ArchSpec", "AttentionParts", "FFNParts", "ModelShape", "SkippedSublayer", "get_spec",
           "register_spec", "spec_for_model_type", "supported_model_types", "unregister_spec"]
