"""Extension points of the training loop. Methods plug in here instead of forking the loop.

Order within one optimizer step:
    on_step_begin -> forward (+ forward_kwargs) -> loss = task loss, passed through each
    callback's compute_loss -> backward -> after_backward (gradients exist: salience)
    -> clip, optimizer step -> after_step (masks, schedules, shape changes)

The contract with the Trainer. A callback may change `trainer.control` (train/control.py) and
call these actions:
    trainer.rebuild_optimizer(survivors, extra_params)  after trainable tensors change shape
    trainer.average_gradients(params)                   for trainable tensors outside DDP
    trainer.evaluate_untimed()                          a dev evaluation not counted as training
    trainer.snapshot_trainable() / restore(state)       copies of the trainable tensors
    trainer.restore_best() / reset_best_to_current()    the selected checkpoint
    trainer.say(text)                                   one line of output, main process only
and read: trainer.step, total_steps, steps_per_epoch, cfg (the LoopConfig), task, accelerator,
model, unwrapped_model. Nothing else on the Trainer is part of the contract.

A callback whose state decides the rest of the run (masks, gates, a teacher) returns it from
checkpoint_state and takes it back in restore_checkpoint_state, which runs before the trainer
loads the model's tensors and the optimizer (train/checkpoint.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .loop import Trainer


class Callback:
    """Override any subset. Every hook gets the trainer."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_step_begin(self, trainer: Trainer, batch: dict[str, Any]) -> None:
        """Before the forward of step `trainer.step` (schedules, snapshots, salience on/off)."""

    def forward_kwargs(self, trainer: Trainer) -> dict[str, Any]:
        """Extra keyword arguments for this step's forward (e.g. output_hidden_states)."""
        return {}

    def compute_loss(self, trainer: Trainer, batch: dict[str, Any], outputs: Any,
                     loss: torch.Tensor) -> torch.Tensor:
        """The loss to optimise this step. `loss` is the task loss (or what an earlier callback
        returned); return it unchanged, mix it (APT's distillation), or replace it (CoFi)."""
        return loss

    def after_backward(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer) -> None: ...

    def on_evaluate_begin(self, trainer: Trainer) -> None:
        """Before a scheduled evaluation (e.g. switch sampled gates to deterministic ones); may
        set `trainer.control.at_final_size`."""

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...

    # -- checkpoints (train/checkpoint.py) -------------------------------------------------------
    def checkpoint_state(self, trainer: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able state) that this callback needs to continue the run exactly; called
        between steps. A callback whose state is only the trainer's returns nothing."""
        return {}, {}

    def restore_checkpoint_state(self, trainer: Trainer, tensors: dict[str, torch.Tensor],
                                 state: dict[str, Any]) -> None:
        """Put back what checkpoint_state returned, before the trainer loads the model's tensors
        and the optimizer (so reshape the model here if the run had reshaped it)."""
