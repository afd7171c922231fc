"""Extension points of the training loop. Methods plug in here instead of forking the loop.

Order within one optimizer step:
    on_step_begin -> forward -> loss = task loss + Σ extra_loss -> backward
    -> after_backward (gradients exist: salience) -> clip, optimizer step
    -> after_step (masks, schedules, shape changes)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .loop import Trainer


class Callback:
    """Override any subset. Every hook gets the trainer, which exposes model, optimizer, step."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def on_step_begin(self, trainer: "Trainer", batch: dict[str, Any]) -> None:
        """Before the forward of step `trainer.step` (schedules, snapshots, salience on/off)."""

    def forward_kwargs(self, trainer: "Trainer") -> dict[str, Any]:
        """Extra keyword arguments for this step's forward (e.g. output_hidden_states)."""
        return {}

    def extra_loss(self, trainer: "Trainer", batch: dict[str, Any], outputs: Any) -> torch.Tensor | None:
        """Return a term added to the task loss (e.g. distillation), or None."""
        return None

    def after_backward(self, trainer: "Trainer") -> None: ...

    def after_step(self, trainer: "Trainer") -> None: ...

    def on_evaluate_begin(self, trainer: "Trainer") -> None:
        """Before a scheduled evaluation (e.g. switch sampled gates to deterministic ones).

        May set `trainer.at_final_size`, which the log records for TTA (default: selection_open).
        """

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...
