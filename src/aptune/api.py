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

from .arch import get_spec
from .config import APTConfig
from .lora import print_trainable_parameters
from .methods.apt import APT


class APTModel(nn.Module):
    """A model with APT adapters, masks and salience taps; forward is the wrapped model's."""

    def __init__(self, model: nn.Module, config: APTConfig) -> None:
        super().__init__()
        config.validate_apt()
        self.config = config
        self.model = model
        self.spec = get_spec(model)
        self.method = APT()
        self.method.prepare(model, self.spec, _with_training_defaults(config))

    def forward(self, *args, **kwargs) -> Any:
        return self.model(*args, **kwargs)

    def callbacks(self) -> list:
        return self.method.callbacks(self.model, self.spec, self.config)

    @property
    def masks(self):
        return self.method.callback.masks

    def print_trainable_parameters(self) -> str:
        return print_trainable_parameters(self.model)

    def merge_and_unload(self) -> nn.Module:
        """Remove pruned structure, merge the adapters, drop hooks: a plain smaller model."""
        return self.method.finalize(self.model, self.spec, self.config)


def _with_training_defaults(config: APTConfig) -> APTConfig:
    for name, value in (("lr", 2e-4), ("warmup_ratio", 0.06), ("seed", 128)):
        if not hasattr(config, name):
            object.__setattr__(config, name, value)
    return config


def get_apt_model(model: nn.Module, config: APTConfig | None = None) -> APTModel:
    return APTModel(model, config or APTConfig())
