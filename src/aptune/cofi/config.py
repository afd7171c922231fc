"""CoFi's hyperparameters (baselines.md §4.10, §5, decisions B10-B18), as a TrainConfig mixin.

The target sparsity is the shared `--sparsity`; the pruning-stage learning rate is the shared
`--lr` (2e-5 for CoFi, 2e-4 for CoFi-LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import AptuneError
from .distill import EXISTING_LAYER_RULES, LAYER_DISTILL_VERSIONS, LAYER_TRANSFORMS

PREPRUNING_MODES = ("100steps", "1epoch")
LORA_HEAD_MODES = ("trainable", "frozen")


def _f(default: Any, help: str) -> Any:
    # aptune.config's helper, repeated: aptune.config will import this module to mix CoFiConfig
    # into TrainConfig, so importing it back from here would be circular.
    return field(default=default, metadata={"help": help})


@dataclass
class CoFiConfig:
    """CoFi (Prune+Distill) and CoFi-LoRA (LoRA+Prune+Distill), baselines.md §4-§5."""

    cofi_teacher_path: str | None = _f(None, "CoFi: the frozen teacher, a finished `aptune train "
                                       "--method ft` run folder (baselines.md B15: our FT "
                                       "baseline's best checkpoint). Default: train it inline.")
    cofi_teacher_epochs: float = _f(10.0, "CoFi: epochs of the inline FT teacher run (when "
                                    "--cofi-teacher-path is not given).")
    cofi_teacher_lr: float = _f(2e-5, "CoFi: learning rate of the inline FT teacher run.")
    cofi_prepruning: str = _f("100steps", "CoFi: length of the distillation-only warm-up before "
                              "the gates switch on: 100steps (--cofi-prepruning-steps; what the "
                              "code ran) or 1epoch (CoFi's README).")
    cofi_prepruning_steps: int = _f(100, "CoFi: pre-pruning steps when --cofi-prepruning is 100steps.")
    reg_lr: float = _f(0.01, "CoFi: learning rate of the L0 log-alphas (descent) and of the "
                       "Lagrange multipliers (ascent); constant, no weight decay.")
    lagrangian_warmup_epochs: float = _f(2.0, "CoFi: epochs over which the target sparsity rises "
                                         "linearly from 0 (2 on large GLUE tasks, 20 on small).")
    cofi_pruning_epochs: float = _f(20.0, "CoFi: length of the pruning stage, pre-pruning steps "
                                    "included (20 on large GLUE tasks, 100 on small).")
    sparsity_epsilon: float = _f(0.0, "CoFi: a pruning-stage checkpoint qualifies as best when "
                                 "its expected sparsity is >= target - epsilon.")
    cofi_distill_temperature: float = _f(2.0, "CoFi: temperature of the prediction-distillation "
                                         "KL (B12; 4 for the sensitivity run).")
    cofi_alpha_layer: float = _f(0.9, "CoFi: weight of the layer-distillation MSE.")
    cofi_alpha_pred: float = _f(0.1, "CoFi: weight of the prediction-distillation KL.")
    cofi_layer_distill_version: int = _f(4, "CoFi: layer mapping: 4 (ordered, top-down; README) "
                                         "or 3 (unordered argmin).")
    cofi_existing_layers: str = _f("mha_only", "CoFi: which student layers the mapping may use: "
                                   "mha_only (z_MHA != 0, the original) or mha_or_ffn (the fix "
                                   "of CoFi issue #53).")
    cofi_ft_epochs: float = _f(20.0, "CoFi: epochs of the fine-tuning stage after compaction "
                               "(0: stop after compaction).")
    cofi_ft_lr: float = _f(2e-5, "CoFi: constant learning rate of the fine-tuning stage.")
    cofi_hidden_fold: str = _f("exact", "CoFi: how compaction folds the hidden-dim gates: exact "
                               "(into every LayerNorm, so the compacted model equals the gated one) "
                               "or cofi (CoFi's update_params: into the readers' columns, exact "
                               "only where z_hid = 1; §4.8).")
    cofi_lora_head: str = _f("trainable", "CoFi-LoRA: the new task head is trainable (default) "
                             "or frozen (the fork's behaviour, B17).")
    cofi_lora_tr: str = _f("frozen_identity", "CoFi-LoRA: the layer-distillation map W_tr stays "
                           "the frozen identity (fork, B18), gets a LoRA (lora) or is fully "
                           "trained (full).")

    def validate_cofi(self) -> None:
        choices = {"cofi_prepruning": PREPRUNING_MODES, "cofi_hidden_fold": ("exact", "cofi"),
                   "cofi_existing_layers": EXISTING_LAYER_RULES,
                   "cofi_lora_head": LORA_HEAD_MODES, "cofi_lora_tr": LAYER_TRANSFORMS,
                   "cofi_layer_distill_version": LAYER_DISTILL_VERSIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                listed = ", ".join(str(a) for a in allowed)
                raise AptuneError(f"--{_flag(name)} must be one of {listed}, got {getattr(self, name)!r}",
                                  f"pick one of {listed}")
        if int(self.cofi_prepruning_steps) < 0:
            raise AptuneError(f"--cofi-prepruning-steps must be >= 0, got {self.cofi_prepruning_steps}",
                              "pass 0 to start pruning at once, or e.g. 100")
        for name in ("reg_lr", "cofi_pruning_epochs", "cofi_distill_temperature", "cofi_ft_lr"):
            if not getattr(self, name) > 0:
                raise AptuneError(f"--{_flag(name)} must be positive, got {getattr(self, name)}",
                                  f"pass a positive --{_flag(name)}")
        for name in ("lagrangian_warmup_epochs", "cofi_ft_epochs", "cofi_alpha_layer", "cofi_alpha_pred"):
            if not getattr(self, name) >= 0:
                raise AptuneError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}",
                                  f"pass a non-negative --{_flag(name)}")
        if self.lagrangian_warmup_epochs > self.cofi_pruning_epochs:
            raise AptuneError(f"--lagrangian-warmup-epochs {self.lagrangian_warmup_epochs} exceeds "
                              f"--cofi-pruning-epochs {self.cofi_pruning_epochs}: the target would "
                              "never be reached", "shorten the warm-up or lengthen the pruning stage")
        if not 0 <= self.sparsity_epsilon < 1:
            raise AptuneError(f"--sparsity-epsilon must be in [0, 1), got {self.sparsity_epsilon}",
                              "use e.g. 0 or 0.01")


def _flag(name: str) -> str:
    return name.replace("_", "-")
