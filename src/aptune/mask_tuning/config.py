"""LoRAPruneConfig: the options of LoRA+Prune, a LoRA run pruned by Mask Tuning and then
retrained (docs/baselines.md#loraprune). `--epochs` and `--lr` are the retraining's (0 epochs:
prune only); `--sparsity` is shared with the other pruning methods. No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..fields import check_choices, check_positive, option


@dataclass
class LoRAPruneConfig:
    """LoRA+Prune: Mask Tuning (Kwon et al. 2022) on a LoRA-tuned model, then LoRA retraining."""

    base_run: str | None = option(None, "LoRA+Prune: a finished `aptune train --method lora` run to "
                                  "prune. Default: train one inline first (into <output>/base-lora).")
    base_epochs: float = option(40.0, "LoRA+Prune: epochs of the inline LoRA run.")
    base_lr: float | None = option(None, "LoRA+Prune: learning rate of the inline LoRA run. Default: "
                                   "LoRA's own (see --lr).")
    mt_constraint: Literal["params", "mac"] = option(
        "params", "LoRA+Prune: what the budget limits: params (non-embedding parameters, as APT's "
        "40% kept) or mac (MACs at the mean dev length, Kwon et al.'s original).")
    mt_num_samples: int = option(2048, "LoRA+Prune: calibration examples for the mask gradients.")
    mt_batch_size: int = option(32, "LoRA+Prune: calibration batch size (2048 / 32 = 64 batches).")
    mt_sample_with_replacement: bool = option(True, "LoRA+Prune: draw the calibration set with "
                                              "replacement (Kwon et al.) or without (APT's port).")
    mt_teacher: Literal["full", "ta_sqrt"] = option(
        "full", "LoRA+Prune: rescaling teacher: full (the unpruned model, as in APT's port) or "
        "ta_sqrt (Kwon et al.'s sqrt(C) teacher-assistant mask).")
    mt_rescale: bool = option(True, "LoRA+Prune: run the layer-wise least-squares rescaling.")

    def validate(self) -> None:
        check_choices(self, LoRAPruneConfig)
        check_positive(self, ("mt_num_samples", "mt_batch_size", "base_epochs", "base_lr"))
