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
    text_to_text = True
    loop_optional = True  # --epochs 0: prune without retraining
    # The retraining loop is LoRA's; Mask Tuning's result is kept beside the checkpoint (stages/)
    # and an inline base run in the unfinished folder, so a resumed run reuses both.
    resumable = True
    STAGE = "mask-tuning"

    @classmethod
    def promises_parameter_count(cls, cfg) -> bool:
        return cfg.mt_constraint == "params"  # a MAC budget keeps whatever parameters it keeps

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
        if ctx.resuming and ctx.stages is not None and (ctx.stages / self.STAGE / "summary.json").is_file():
            return self._finished_stage(ctx, needed)
        batches = ctx.calibration_batches(cfg.mt_num_samples, cfg.mt_batch_size,
                                          cfg.mt_sample_with_replacement)
        base_eval = ctx.evaluate(base)
        mt_cfg = MaskTuningConfig(kept=1 - cfg.sparsity, constraint=cfg.mt_constraint,
                                  seq_len=ctx.dev_mean_tokens, teacher=cfg.mt_teacher,
                                  rescale=cfg.mt_rescale,
                                  # a classifier reads [CLS] only; a QA head reads every token
                                  classification=ctx.task.head == "sequence-classification")
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
        if ctx.stages is not None and ctx.accelerator.is_main_process:
            self._keep_stage(ctx.stages / self.STAGE, base, ctx.tokenizer)
        return base, self._cost(needed)

    def _cost(self, needed: PrerequisiteRun) -> Cost:
        peak = max(needed.cost.peak_memory_bytes, self.mask_tuning["peak_memory_bytes"])
        return Cost(seconds=needed.cost.seconds + self.mask_tuning["seconds_with_materialize"],
                    peak_memory_bytes=peak)

    def _keep_stage(self, folder, model, tokenizer) -> None:
        """The pruned, rescaled model and Mask Tuning's record, for a resumed run (written to a
        temporary folder, then renamed)."""
        import json
        import os
        import shutil

        from ..export.pruned import save_pruned

        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_pruned(model, tmp / "model", tokenizer)
        (tmp / "summary.json").write_text(json.dumps(self.mask_tuning, default=float) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    def _finished_stage(self, ctx, needed: PrerequisiteRun) -> tuple[nn.Module, Cost]:
        import json

        from ..export.pruned import load_pruned

        folder = ctx.stages / self.STAGE
        self.mask_tuning = json.loads((folder / "summary.json").read_text())
        ctx.say(f"mask tuning: reusing the result this run saved in {folder} (its "
                f"{self.mask_tuning['seconds_with_materialize']:.1f} s still count)")
        return load_pruned(folder / "model", ctx.accelerator.device), self._cost(needed)

    # retraining: plain LoRA on the compacted model (inherited prepare/finalize)
    def describe(self, model: nn.Module, cfg) -> dict:
        return {**super().describe(model, cfg), "base": self.base, "mask_tuning": self.mask_tuning,
                "retrain_epochs": cfg.epochs, "retrain_lr": cfg.lr}
