"""The PEFT-style Python API: APTConfig, get_apt_model, print_trainable_parameters,
merge_and_unload, load_pruned.

    from aptune import APTConfig, get_apt_model
    apt = get_apt_model(model, APTConfig(sparsity=0.6))
    apt.print_trainable_parameters()
    # train with aptune.train.loop.Trainer(..., callbacks=apt.callbacks()), then:
    small = apt.merge_and_unload()        # a physically smaller, plain transformers model
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .apt.callback import attach_apt
from .apt.config import APTConfig
from .apt.masks import Masks
from .arch import get_spec
from .lora import print_trainable_parameters


class APTModel(nn.Module):
    """A model with APT adapters, masks and salience taps; forward is the wrapped model's."""

    def __init__(self, model: nn.Module, config: APTConfig, seed: int = 128) -> None:
        super().__init__()
        if config.lambda_pred is None and type(model).__name__.endswith("ForQuestionAnswering"):
            config.lambda_pred = 0.1  # L_pred's weight on extractive QA (docs/method.md#distillation-losses)
        config.validate()
        self.config = config
        self.model = model
        self.spec = get_spec(model)
        self.callback = attach_apt(model, self.spec, config, seed)

    def forward(self, *args, **kwargs) -> Any:
        return self.model(*args, **kwargs)

    def callbacks(self) -> list:
        """The training-loop callbacks that run APT (pass them to aptune.train.loop.Trainer)."""
        return [self.callback]

    @property
    def masks(self) -> Masks:
        return self.callback.pruner.masks

    def print_trainable_parameters(self) -> str:
        return print_trainable_parameters(self.model)

    def merge_and_unload(self) -> nn.Module:
        """Remove pruned structure, merge the adapters, drop hooks: a plain smaller model."""
        return self.callback.finalize(self.model)


def get_apt_model(model: nn.Module, config: APTConfig | None = None, seed: int = 128) -> APTModel:
    return APTModel(model, config or APTConfig(), seed)
