"""LoRA+Prune (baselines.md §3): a LoRA run, merged; Mask Tuning; then LoRA retraining.

The base LoRA model comes from `--base-run DIR` or is trained inline first. Mask Tuning prunes it
(heads and FFN neurons; never hidden dimensions) and folds the tuned scales into the weights.
This run's own training loop is the retraining: fresh LoRA (r 8, α 16 on query and value) on the
compacted model. Every second spent before the loop (the LoRA run up to its selected checkpoint,
plus Mask Tuning) is charged to this method's training time.
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from ..mask_tuning import MaskTuningConfig, run_mask_tuning
from ..mask_tuning.materialize import materialize
from ..train.memory import PeakMemoryMeter
from .base import RunContext
from .lora import LoRA
from .prerequisite import prerequisite_model


class LoRAPrune(LoRA):
    name = "lora-prune"
    description = "LoRA, then Mask Tuning (Kwon et al.) on the merged model, then LoRA retraining"

    def __init__(self) -> None:
        self.base: dict[str, Any] = {}
        self.mask_tuning: dict[str, Any] = {}
        self.seconds_before_training = 0.0
        self.peak_memory_before_training = 0

    # -- the LoRA run, then Mask Tuning ----------------------------------------------------------
    def start_model(self, model: nn.Module, spec, ctx: RunContext) -> nn.Module:
        del model  # the pretrained weights are not used: the LoRA run is the starting point
        cfg = ctx.cfg
        base, self.base = prerequisite_model(ctx, cfg.base_run, "lora", "--base-run",
                                             {"epochs": cfg.base_epochs, "lr": cfg.base_lr})
        batches = ctx.calibration_batches(cfg.mt_num_samples, cfg.mt_batch_size,
                                          cfg.mt_sample_with_replacement)
        base_eval = ctx.evaluate(base)
        mt_cfg = MaskTuningConfig(kept=1 - cfg.sparsity, constraint=cfg.mt_constraint,
                                  seq_len=ctx.dev_mean_tokens, teacher=cfg.mt_teacher,
                                  rescale=cfg.mt_rescale, classification=True)
        meter = PeakMemoryMeter(ctx.accelerator.device)
        meter.start()
        t0 = time.perf_counter()
        result = run_mask_tuning(base, spec, batches, mt_cfg, log=ctx.say)
        structure = materialize(base, spec, result.head, result.neuron)
        seconds = time.perf_counter() - t0
        pruned_eval = ctx.evaluate(base)
        metric = ctx.task.metric
        self.mask_tuning = {**result.summary(), "seconds_with_materialize": round(seconds, 3),
                            "peak_memory_bytes": meter.peak_bytes(),
                            "dev_before": base_eval, "dev_after": pruned_eval,
                            "drop": base_eval[metric] - pruned_eval[metric],
                            "kept_heads_per_layer": [len(h) for h in structure["heads"]],
                            "kept_neurons_per_layer": [len(n) for n in structure["neurons"]]}
        ctx.say(f"mask tuning: {seconds:.1f} s in all; dev {metric} {base_eval[metric]:.4f} (LoRA, "
                f"merged) -> {pruned_eval[metric]:.4f} (pruned, before retraining)")
        self.seconds_before_training = self.base["train_seconds_to_selected"] + seconds
        self.peak_memory_before_training = max(self.base["peak_train_memory_bytes"],
                                               self.mask_tuning["peak_memory_bytes"])
        return base

    # -- retraining: plain LoRA on the compacted model (inherited prepare/finalize) -----------
    def describe(self, model: nn.Module, cfg) -> dict:
        return {**super().describe(model, cfg), "base": self.base, "mask_tuning": self.mask_tuning,
                "retrain_epochs": cfg.epochs, "retrain_lr": cfg.lr}
