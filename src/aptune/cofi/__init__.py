"""CoFi (Xia, Zhong, Chen, ACL 2022), the Prune+Distill baselines' library pieces (baselines.md §4-§5).

L0 / hard-concrete structured pruning of heads, attention layers, FFN neurons, FFN layers and
hidden dimensions, steered to a target sparsity by a Lagrangian and trained with distillation
from a fine-tuned teacher. One concept per module:
    gates.py          hard-concrete gates: log α, sampling, P(z≠0), deterministic gates, clamp
    expected_size.py  CoFi's size model M, expected size Ŝ / sparsity ŝ, size at evaluation
    lagrangian.py     L_c with λ1, λ2, the target warm-up, and the descent/ascent optimizers
    apply.py          forward hooks that make the gates act on a stock transformers model
    compaction.py     fold the deterministic gate values into the weights, then slice
    distill.py        prediction KL + ordered layer-MSE distillation (mapping version 4)
    config.py         the CoFiConfig mixin of TrainConfig
The training method itself lives in aptune.methods.
"""

from .apply import GateHooks, apply_gates
from .compaction import CompactionResult, compact_with_gates, fold_gates
from .config import CoFiConfig
from .distill import CoFiDistillLoss, DistillLosses, existing_layers, make_layer_transform, teacher_layers_v4
from .expected_size import (ModelShape, deterministic_size, deterministic_sparsity, expected_size,
                            expected_sparsity)
from .gates import CoFiGates, L0Gates
from .lagrangian import LagrangianControl, build_l0_optimizers, target_sparsity_at

__all__ = ["CoFiConfig", "CoFiDistillLoss", "CoFiGates", "CompactionResult", "DistillLosses", "GateHooks",
           "L0Gates", "LagrangianControl", "ModelShape", "apply_gates", "build_l0_optimizers",
           "compact_with_gates", "deterministic_size", "deterministic_sparsity", "existing_layers",
           "expected_size", "expected_sparsity", "fold_gates", "make_layer_transform",
           "target_sparsity_at", "teacher_layers_v4"]
