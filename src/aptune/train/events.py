"""Extension points of the training loop. Methods plug in here instead of forking the loop.

Order within one optimizer step:
    forward -> loss = task loss + Σ extra_loss -> backward -> after_backward (gradients exist:
    salience) -> clip, optimizer step -> after_step (masks, schedules, shape changes)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .loop import Trainer


class Callback:
    """Override any subset. Every hook gets the trainer, which exposes model, optimizer, step."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def extra_loss(self, trainer: "Trainer", batch: dict[str, Any], outputs: Any) -> torch.Tensor | None:
        """Return a term added to the task loss (e.g. distillation), or None."""
        return None

    def after_backward(self, trainer: "Trainer") -> None: ...

    def after_step(self, trainer: "Trainer") -> None: ...

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...
