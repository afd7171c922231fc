"""CoFiConfig: the options of CoFi and CoFi-LoRA (docs/baselines.md#cofi-optimisation,
docs/baselines.md#cofi-lora, docs/baselines.md#decisions). No torch here.

The target sparsity is the shared `--sparsity`; the pruning-stage learning rate is the shared
`--lr` (2e-5 for CoFi, 2e-4 for CoFi-LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import AptuneError
from ..fields import check_choices, check_positive, option

ExistingLayerRule = Literal["mha_only", "mha_or_ffn"]
LayerDistillVersion = Literal[3, 4]
LayerTransform = Literal["full", "frozen_identity", "lora"]
EXISTING_LAYER_RULES = get_args(ExistingLayerRule)
LAYER_DISTILL_VERSIONS = get_args(LayerDistillVersion)
LAYER_TRANSFORMS = get_args(LayerTransform)


@dataclass
class CoFiConfig:
    """CoFi (Prune+Distill) and CoFi-LoRA (LoRA+Prune+Distill); docs/baselines.md#decisions names
    the choices behind each default."""

    cofi_teacher_path: str | None = option(
        None, "CoFi: the frozen teacher, a finished `aptune train --method ft` run folder (our FT "
        "baseline's best checkpoint). Default: train it inline.")
    cofi_teacher_epochs: float = option(10.0, "CoFi: epochs of the inline FT teacher run (when "
                                        "--cofi-teacher-path is not given).")
    cofi_teacher_lr: float | None = option(None, "CoFi: learning rate of the inline FT teacher run. "
                                           "Default: FT's own (see --lr).")
    cofi_prepruning: Literal["100steps", "1epoch"] = option(
        "100steps", "CoFi: length of the distillation-only warm-up before the gates switch on: "
        "100steps (--cofi-prepruning-steps; what CoFi's code ran) or 1epoch (CoFi's README).")
    cofi_prepruning_steps: int = option(100, "CoFi: pre-pruning steps when --cofi-prepruning is 100steps.")
    reg_lr: float = option(0.01, "CoFi: learning rate of the L0 log-alphas (descent) and of the "
                           "Lagrange multipliers (ascent); constant, no weight decay.")
    lagrangian_warmup_epochs: float = option(2.0, "CoFi: epochs over which the target sparsity rises "
                                             "linearly from 0 (2 on large GLUE tasks, 20 on small).")
    cofi_pruning_epochs: float = option(20.0, "CoFi: length of the pruning stage, pre-pruning steps "
                                        "included (20 on large GLUE tasks, 100 on small).")
    sparsity_epsilon: float = option(0.0, "CoFi: a pruning-stage checkpoint qualifies as best when "
                                     "its expected sparsity is >= target - epsilon.")
    cofi_distill_temperature: float = option(2.0, "CoFi: temperature of the prediction-distillation "
                                             "KL (4 for the sensitivity run).")
    cofi_alpha_layer: float = option(0.9, "CoFi: weight of the layer-distillation MSE.")
    cofi_alpha_pred: float = option(0.1, "CoFi: weight of the prediction-distillation KL.")
    cofi_layer_distill_version: LayerDistillVersion = option(
        4, "CoFi: layer mapping: 4 (ordered, top-down; CoFi's README) or 3 (unordered argmin).")
    cofi_existing_layers: ExistingLayerRule = option(
        "mha_only", "CoFi: which student layers the mapping may use: mha_only (z_MHA != 0, the "
        "original) or mha_or_ffn (the fix of CoFi issue #53).")
    cofi_ft_epochs: float = option(20.0, "CoFi: epochs of the fine-tuning stage after compaction "
                                   "(0: stop after compaction).")
    cofi_ft_lr: float | None = option(None, "CoFi: constant learning rate of the fine-tuning stage. "
                                      "Default: the paper's 2e-5 scaled as --lr is.")
    cofi_hidden_fold: Literal["exact", "cofi"] = option(
        "exact", "CoFi: how compaction folds the hidden-dim gates: exact (into every LayerNorm, so "
        "the compacted model equals the gated one) or cofi (CoFi's update_params: into the "
        "readers' columns, exact only where z_hid = 1).")
    cofi_lora_head: Literal["trainable", "frozen"] = option(
        "trainable", "CoFi-LoRA: the new task head is trainable (default) or frozen (the APT "
        "authors' fork).")
    cofi_lora_tr: LayerTransform = option(
        "frozen_identity", "CoFi-LoRA: the layer-distillation map W_tr stays the frozen identity "
        "(the APT authors' fork), gets a LoRA (lora) or is fully trained (full).")

    def validate(self) -> None:
        check_choices(self, CoFiConfig)
        check_positive(self, ("cofi_prepruning_steps",), allow_zero=True)
        check_positive(self, ("reg_lr", "cofi_pruning_epochs", "cofi_distill_temperature", "cofi_ft_lr"))
        check_positive(self, ("lagrangian_warmup_epochs", "cofi_ft_epochs", "cofi_alpha_layer",
                              "cofi_alpha_pred"), allow_zero=True)
        if self.lagrangian_warmup_epochs > self.cofi_pruning_epochs:
            raise AptuneError(f"--lagrangian-warmup-epochs {self.lagrangian_warmup_epochs} exceeds "
                              f"--cofi-pruning-epochs {self.cofi_pruning_epochs}: the target would "
                              "never be reached", "shorten the warm-up or lengthen the pruning stage")
        if not 0 <= self.sparsity_epsilon < 1:
            raise AptuneError(f"--sparsity-epsilon must be in [0, 1), got {self.sparsity_epsilon}",
                              "use e.g. 0 or 0.01")
