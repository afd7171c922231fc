"""Architecture specs: the only model-family-specific code in aptune."""

from __future__ import annotations

from ..errors import AptuneError
from .base import ArchSpec, AttentionParts, FFNParts
from .bert import BertSpec

_SPECS: list[ArchSpec] = [BertSpec()]


def supported_model_types() -> list[str]:
    return sorted(t for spec in _SPECS for t in spec.model_types)


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


__all__ = ["ArchSpec", "AttentionParts", "FFNParts", "get_spec", "spec_for_model_type",
           "supported_model_types"]
