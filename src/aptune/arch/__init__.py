"""Architecture specs: the only model-family-specific code in aptune."""

from __future__ import annotations

from ..errors import AptuneError
from .base import ArchSpec, AttentionParts, FFNParts, SkippedSublayer
from .bert import BertSpec
from .bert2bert import Bert2BertSpec
from .shape import ModelShape
from .t5 import T5Spec

_SPECS: list[ArchSpec] = [BertSpec(), T5Spec(), Bert2BertSpec()]


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
    families = ", ".join(f"{', '.join(s.model_types)} ({s.family})" if s.family not in s.model_types
                         else ", ".join(s.model_types) for s in _SPECS)
    raise AptuneError(
        f"model family '{model_type}' is not supported yet",
        f"use a model whose config.model_type is one of: {families}",
    )


def spec_for_config(config) -> ArchSpec:
    """The spec for a model config, after the spec has checked that it can describe it."""
    spec = spec_for_model_type(config.model_type)
    spec.check_config(config)
    return spec


def get_spec(model) -> ArchSpec:
    return spec_for_model_type(model.config.model_type)


__all__ = ["ArchSpec", "AttentionParts", "FFNParts", "ModelShape", "SkippedSublayer", "get_spec",
           "register_spec", "spec_for_config", "spec_for_model_type", "supported_model_types",
           "unregister_spec"]
