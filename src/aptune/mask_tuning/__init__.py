"""Mask Tuning (Kwon et al. 2022), the post-training pruning step of the LoRA+Prune baseline
(docs/baselines.md#loraprune).

Mask gradients -> diagonal Fisher -> constrained search -> per-layer rearrangement -> layer-wise
least-squares rescaling. It never updates a weight; it only decides which heads and neurons to
keep and how to rescale the survivors. One concept per module:
    config.py      LoRAPruneConfig: the options of the LoRA+Prune method (torch-free)
    unit_masks.py  differentiable head/neuron masks, applied through aptune.hooks
    fisher.py      per-batch mask gradients and the diagonal Fisher
    search.py      block costs (MACs or parameters) and the exact two-type knapsack search
    rearrange.py   the greedy block-diagonal-Fisher rearrangement within a layer
    rescale.py     damped least squares (LSMR) per sub-layer, with the original's stop rule
    materialize.py fold the scales into the weights and slice the pruned units out
    pipeline.py    the whole procedure, timed
The registry entry is aptune.methods.lora_prune.
"""
