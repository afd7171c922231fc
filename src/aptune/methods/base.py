"""A method decides what is trainable, what runs during training, and what the final model is."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..arch import ArchSpec
from ..train.events import Callback


class Method:
    name: str = ""
    description: str = ""
    # Under DDP: parameters may go without gradients (e.g. adapters in a fully masked sub-layer).
    has_unused_parameters: bool = False

    def prepare(self, model: nn.Module, spec: ArchSpec, cfg: Any) -> nn.Module:
        """Make the model trainable the method's way (freeze, add adapters) and return it."""
        raise NotImplementedError

    def callbacks(self, model: nn.Module, spec: ArchSpec, cfg: Any) -> list[Callback]:
        return []

    def finalize(self, model: nn.Module, spec: ArchSpec, cfg: Any) -> nn.Module:
        """Turn the trained model into a plain inference model (merge adapters, etc.)."""
        return model

    def describe(self, model: nn.Module, cfg: Any) -> dict[str, Any]:
        """Method settings that go into metrics.json."""
        return {}
