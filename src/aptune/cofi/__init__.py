"""CoFi (Xia, Zhong, Chen, ACL 2022), the Prune+Distill baselines (docs/baselines.md#cofi).

L0 / hard-concrete structured pruning of heads, attention layers, FFN neurons, FFN layers and
hidden dimensions, steered to a target sparsity by a Lagrangian and trained with distillation
from a fine-tuned teacher. One concept per module:
    config.py         CoFiConfig: the options (torch-free)
    gates.py          hard-concrete gates: log α, sampling, P(z≠0), deterministic gates, clamp
    expected_size.py  CoFi's size model M, expected size Ŝ / sparsity ŝ, size at evaluation
    lagrangian.py     L_c with λ1, λ2, the target warm-up, and the descent/ascent optimizers
    apply.py          the gates acting on a stock transformers model through aptune.hooks
    compaction.py     fold the deterministic gate values into the weights, then slice
    distill.py        prediction KL + ordered layer-MSE distillation (mapping version 4)
    callback.py       the two stages in the training loop
The registry entries are aptune.methods.cofi (CoFi and CoFi-LoRA).
"""
