"""LoRA+Prune: a LoRA run, merged; Mask Tuning; then LoRA retraining (docs/baselines.md#loraprune).

The LoRA run is this method's prerequisite (`--base-run DIR`, or trained inline first). Mask
Tuning prunes it (heads and FFN neurons; never hidden dimensions) and folds the tuned scales into
the weights. This run's own training loop is the retraining: fresh LoRA on the compacted model.
The LoRA run up to its selected checkpoint, plus Mask Tuning, is charged to this method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..mask_tuning.config import LoRAPruneConfig
from .base import Cost, Prerequisite, PrerequisiteRun
from .lora import LoRA

if TYPE_CHECKING:
    from torch import nn


class LoRAPrune(LoRA):
    name = "lora-prune"
    label = "LoRA+Prune"
    description = "LoRA, then Mask Tuning (Kwon et al.) on the merged model, then LoRA retraining"
    config_section = LoRAPruneConfig
    prerequisite = Prerequisite("lora", "base_run", {"epochs": "base_epochs", "lr": "base_lr"},
                                "the LoRA run to prune")
    prunes = True
    loop_optional = True  # --epochs 0: prune without retraining
    resumable = False  # its Mask Tuning stage and base run are not in the loop's checkpoint yet

    def __init__(self) -> None:
        self.base: dict[str, Any] = {}
        self.mask_tuning: dict[str, Any] = {}

    def start(self, model: nn.Module, spec, ctx, needed: PrerequisiteRun | None) -> tuple[nn.Module, Cost]:
        import time

        from ..mask_tuning.materialize import materialize
        from ..mask_tuning.pipeline import MaskTuningConfig, run_mask_tuning
        from ..train.memory import PeakMemoryMeter

        del model  # the pretrained weights are not used: the LoRA run is the starting point
        cfg, base, self.base = ctx.cfg, needed.model, needed.summary
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
        summary = structure.summary()
        self.mask_tuning = {**result.summary(), "seconds_with_materialize": round(seconds, 3),
                            "peak_memory_bytes": meter.peak_bytes(),
                            "dev_before": base_eval, "dev_after": pruned_eval,
                            "drop": base_eval[metric] - pruned_eval[metric],
                            "kept_heads_per_layer": summary["heads"],
                            "kept_neurons_per_layer": summary["neurons"]}
        ctx.say(f"mask tuning: {seconds:.1f} s in all; dev {metric} {base_eval[metric]:.4f} (LoRA, "
                f"merged) -> {pruned_eval[metric]:.4f} (pruned, before retraining)")
        return base, Cost(seconds=needed.cost.seconds + seconds,
                          peak_memory_bytes=max(needed.cost.peak_memory_bytes,
                                                self.mask_tuning["peak_memory_bytes"]))

    # retraining: plain LoRA on the compacted model (inherited prepare/finalize)
    def describe(self, model: nn.Module, cfg) -> dict:
        return {**super().describe(model, cfg), "base": self.base, "mask_tuning": self.mask_tuning,
                "retrain_epochs": cfg.epochs, "retrain_lr": cfg.lr}
