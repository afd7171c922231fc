"""APT: adaptive pruning and tuning with self-distillation. The method lives in aptune/apt/;
this entry declares its facts and hands the run to APTCallback (docs/method.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..apt.config import APTConfig
from .base import Method

if TYPE_CHECKING:
    from torch import nn


class APT(Method):
    name = "apt"
    label = "APT"
    description = "adaptive pruning and tuning with self-distillation"
    config_section = APTConfig
    prunes = True
    adapters = True
    resumable = True  # its callback checkpoints masks, ranks, salience and the teacher
    has_unused_parameters = True
    text_to_text = True

    def resolve_defaults(self, cfg, total_steps: int) -> str | None:
        from ..apt.schedule import resolve_distillation_defaults

        chosen = resolve_distillation_defaults(cfg, total_steps)  # resolved with or without distillation
        return chosen if cfg.distill and cfg.prune else None

    def prepare(self, model: nn.Module, spec, cfg) -> nn.Module:
        from ..apt.callback import attach_apt

        self.callback = attach_apt(model, spec, cfg, seed=cfg.seed)
        return model

    def callbacks(self, model: nn.Module, spec, cfg) -> list:
        return [self.callback]

    def finalize(self, model: nn.Module, spec, cfg) -> nn.Module:
        return self.callback.finalize(model)

    def describe(self, model: nn.Module, cfg) -> dict[str, Any]:
        return self.callback.describe()
