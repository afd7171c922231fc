"""APTConfig: APT's hyperparameters (docs/method.md#hyperparameters), with PEFT's names where
they fit. Every field is also a recipe key and an `aptune train` flag. No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import AptuneError
from ..fields import check_choices, option


ADAPTERS = "Adapters (lora, lora-prune, cofi-lora, apt)"


@dataclass
class APTConfig:
    """APT's hyperparameters. `get_apt_model(model, APTConfig(sparsity=0.6))` takes one directly."""

    sparsity: float = option(0.6, "APT: fraction of non-embedding parameters to remove (0.6 keeps 40%).")
    r: int = option(8, "Initial adapter rank (every adapter method).", panel=ADAPTERS)
    lora_alpha: float = option(16.0, "Adapter alpha; the scaling alpha / r is fixed at creation (2).",
                               panel=ADAPTERS)
    target_modules: list[str] | None = option(None, "Module-name suffixes that get adapters. Default: "
                                              "the family's query and value (LoRA), plus the FFN "
                                              "up-projection (APT).", panel=ADAPTERS)
    max_rank: int = option(64, "APT: cap on any adapter's rank.")
    tuning_budget_ratio: float = option(4.0, "APT: tuning parameters grow linearly to this multiple "
                                        "of their starting count by the end of pruning.")
    rank_selection: Literal["tophalf", "all"] = option(
        "tophalf", "APT: which adapters grow: tophalf (by importance) or all (the 'w/o salience' "
        "ablation: uniform growth).")
    rank_growth_rule: Literal["paper", "budget_fill"] = option(
        "paper", "APT: r' = floor(r * budget ratio) (paper) or budget_fill (code).")
    new_rank_init: Literal["gaussian", "kaiming_uniform"] = option(
        "gaussian", "APT: init of new adapter rows: gaussian or kaiming_uniform.")
    num_prunings: int = option(10, "APT: number of pruning points.")
    schedule_mode: Literal["auto", "relative", "absolute"] = option(
        "auto", "APT: relative (fractions of the run), absolute (paper's step constants), or auto "
        "(absolute only for runs of paper length).")
    pruning_start_frac: float = option(0.02, "APT relative schedule: salience starts at this fraction of T.")
    pruning_end_frac: float = option(0.70, "APT relative schedule: the last pruning point, as a "
                                     "fraction of T.")
    sparsity_warmup_frac: float = option(1 / 3, "APT relative schedule: part of the pruning window "
                                         "where the kept ratio stays 1.")
    distill_end_frac: float = option(0.80, "APT relative schedule: distillation ends at this fraction of T "
                                     "(docs/method.md#short-runs: why 0.80; 0.95 before).")
    pruning_start_step: int = option(200, "APT absolute schedule: first salience step.")
    pruning_end_epoch: float = option(3.0, "APT absolute schedule: last pruning point, in epochs.")
    sparsity_warmup_epochs: float = option(1.0, "APT absolute schedule: epochs with kept ratio 1.")
    mask_decay_window: int = option(200, "APT absolute schedule: decay-window length in steps.")
    mask_decay_step: float = option(0.01, "APT absolute schedule: mask change per step in a window.")
    distill_epochs: float = option(20.0, "APT absolute schedule: epochs of self-distillation.")
    pruning_schedule: Literal["cubic", "linear", "once"] = option(
        "cubic", "APT: shape of the kept-ratio schedule: cubic, linear or once.")
    param_count_mode: Literal["code", "paper"] = option(
        "code", "APT: size formula of the budget: code (weights, biases and LayerNorms: the count "
        "the pruned tensors give) or paper (Eq. 6).")
    salience_beta: float = option(0.85, "APT: EMA factor of block salience and adapter importance.")
    use_kurtosis: bool = option(True, "APT: add the outlier (kurtosis) term to salience.")
    kurtosis_scale: Literal["salience_total", "raw"] = option(
        "salience_total", "APT: scale of the outlier term. salience_total: per block type (heads, "
        "neurons, hidden dims), rescaled so that over the alive blocks it sums to --kurtosis-weight "
        "times their activation x gradient salience, so it reorders blocks within a type and cannot "
        "swamp the balance between types on any model size; raw: added as it is (paper Eq. 5).")
    kurtosis_weight: float = option(1.0, "APT: multiplier of the outlier term, after its scaling.")
    salience_position_norm: Literal["auto", "sum", "per_stream_mean"] = option(
        "auto", "APT: how a tap's activation sums over positions: sum, or per_stream_mean (divided "
        "by its stream's length, as the original T5 code did, so that a 2-token decoder is not "
        "outweighed by a long encoder input); auto: per_stream_mean on encoder-decoders, else sum.")
    prune: bool = option(True, "APT: prune at all (off = the 'w/o A_P' ablation).")
    grow_ranks: bool = option(True, "APT: grow adapter ranks (off = the 'w/o A_T' ablation).")
    distill: bool = option(True, "APT: self-distillation (off = the 'w/o D_S' ablation).")
    distill_temperature: float = option(4.0, "APT: temperature of the prediction-distillation KL.")
    lambda_pred: float | None = option(None, "APT: weight of the prediction-distillation loss. Default "
                                       "per task: 1.0 for classification, 0.1 for squad_v2.")
    lambda_layer: float = option(0.9, "APT: weight of the layer-distillation loss.")
    distill_weight_max: float | None = option(
        None, "APT: ceiling of the distillation weight μ, which ramps to it at the last pruning point "
        "(1: pure distillation from there until distillation ends, the paper; below 1 the task "
        "loss keeps weight 1 - μ). Default: 0.5 on short runs (the relative schedule), 1 on runs "
        "of paper length and with --paper-defaults (docs/method.md#distillation-on-short-runs).")
    teacher_refresh: Literal["on_improvement", "once"] = option(
        "on_improvement", "APT: refresh the teacher on_improvement or once.")
    teacher_gate: bool = option(True, "APT: take a teacher snapshot only when it scores better on "
                                "dev than a constant answer (the most frequent label; 'no answer' on "
                                "SQuAD) by more than one dev row; until one does, there is nothing to "
                                "distil. --no-teacher-gate = the paper, which distils from the first "
                                "snapshot whatever it scores. No effect on tasks without such a floor "
                                "(summarisation).")
    optimizer_reset: Literal["preserve", "reset"] = option(
        "preserve", "APT: after shape changes keep surviving AdamW state (preserve) or start fresh "
        "(reset, as in the paper).")
    post_distill_lr_factor: float = option(0.1, "APT: peak LR factor after distillation ends "
                                           "(segmented LR schedule only).")
    lr_schedule: Literal["auto", "segmented", "single"] = option(
        "auto", "APT: segmented (the original code: the learning rate warms up and decays again "
        "over distillation, then over the rest at --post-distill-lr-factor), single (one warm-up "
        "and linear decay over the whole run, as for the other methods), or auto: single on short "
        "runs (the relative schedule), segmented on runs of paper length and with --paper-defaults "
        "(docs/method.md#distillation-on-short-runs).")
    shrink_student: bool = option(
        True, "APT: after the last pruning point, compact the student to its masks for the rest of "
        "distillation while the teacher keeps its own frozen copy (the paper's virtual pruning, "
        "done by compaction: the same numbers up to rounding, faster steps). Off: the student "
        "stays masked at its size of the last teacher refresh until distillation ends.")
    teacher_precision: Literal["model", "bfloat16", "float16"] = option(
        "model", "APT: precision of the teacher's forward: model (the model's dtype, exact), or "
        "bfloat16 / float16 autocast (its matrix products in half precision, with encoder inputs "
        "padded to multiples of 16 tokens; no copy of any weight; its targets are cast back to the "
        "model's dtype, so only the teacher's rounding changes). Pays where half-precision "
        "products are fast: GPUs, CPUs with AVX512-BF16 or AMX.")
    kept_multiple: int = option(
        1, "APT: round each layer's kept FFN neurons, and the kept hidden dims, down to a multiple "
        "of this at every pruning point (8 suits CPU vector units and GPU tensor cores: a compacted "
        "model with widths such as 1215 runs slower than one a few neurons narrower). The kept "
        "share then ends slightly under the target. 1: the exact keep-set of the budget (the paper).")
    compact_every_point: bool = option(
        False, "APT, with shrink_student: compact the student at every pruning point that cuts "
        "something, not only the last; a teacher sharing the backbone keeps its own copy until "
        "its next refresh. Fewer activations per step, but the copy holds the weights the student "
        "sheds (the word embeddings too once hidden dims are cut): it pays when activations "
        "dominate (long inputs, large batches; MNLI at 128 tokens: yes; SST-2 at 64: no).")
    max_inference_cost: float | None = option(
        None, "APT: also keep the pruned model's inference cost (multiply-adds per example of its "
        "transformer layers, at --inference-lengths) at most this fraction of the dense model's, "
        "beside the size budget (docs/method.md#inference-cost-budget). On encoder-decoders the "
        "encoder runs on the whole input and the decoder on a few tokens, so the size budget alone "
        "cuts the decoder and keeps the encoder that sets the latency. Default: no cost budget.")
    inference_lengths: str | None = option(
        None, "APT, with --max-inference-cost: tokens per example that each stack runs on at "
        "inference, SOURCE[,TARGET] (e.g. 128,2). Default: the task's inference length (128 tokens, "
        "384 for squad_v2, 512 for cnn_dailymail) and, for encoder-decoders, the target tokens its "
        "measurement uses (2 for text-to-text classification, 64 generated for summaries).")

    def validate(self) -> None:
        if not 0 < self.sparsity < 1:
            raise AptuneError(f"--sparsity must be inside (0, 1), got {self.sparsity}",
                              "pass e.g. --sparsity 0.6 to keep 40% of the non-embedding parameters")
        check_choices(self, APTConfig)
        if self.lambda_pred is None:  # TrainConfig sets the task's weight first; alone: classification's
            self.lambda_pred = 1.0
        if self.distill_weight_max is not None and not 0 <= self.distill_weight_max <= 1:
            raise AptuneError(f"--distill-weight-max must be in [0, 1], got {self.distill_weight_max}",
                              "pass e.g. --distill-weight-max 0.5, or --no-distill to drop distillation")
        if not self.kurtosis_weight >= 0:
            raise AptuneError(f"--kurtosis-weight must be >= 0, got {self.kurtosis_weight}",
                              "pass e.g. --kurtosis-weight 1, or --no-use-kurtosis to drop the term")
        if self.kept_multiple < 1:
            raise AptuneError(f"--kept-multiple must be at least 1, got {self.kept_multiple}",
                              "pass --kept-multiple 8 to round kept widths to multiples of 8, or 1 for none")
        if self.max_inference_cost is not None and not 0 < self.max_inference_cost <= 1:
            raise AptuneError(f"--max-inference-cost must be in (0, 1], got {self.max_inference_cost}",
                              "pass e.g. --max-inference-cost 0.6 to allow 60% of the dense model's cost")
        self.inference_lengths = parse_lengths(self.inference_lengths)
        if self.r <= 0:
            raise AptuneError(f"LoRA rank r must be positive, got {self.r}", "pass --r 8")
        if self.max_rank < self.r:
            raise AptuneError(f"--max-rank {self.max_rank} is below --r {self.r}", "raise --max-rank")


def parse_lengths(value) -> str | None:
    """--inference-lengths as "SOURCE[,TARGET]" (a recipe may give a number or a list): checked
    and written back in its one spelling; the pruner reads it with `lengths_of`."""
    if value is None or value == "":
        return None
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        lengths = [int(str(p).strip()) for p in parts]
    except ValueError:
        lengths = []
    if not 1 <= len(lengths) <= 2 or min(lengths) < 1:
        raise AptuneError(f"--inference-lengths must be one or two positive token counts, got {value!r}",
                          "pass SOURCE[,TARGET], e.g. --inference-lengths 128,2")
    return ",".join(str(n) for n in lengths)


def lengths_of(value: str | None) -> list[int]:
    """The token counts of a checked --inference-lengths value ([] when not set)."""
    return [int(p) for p in value.split(",")] if value else []
