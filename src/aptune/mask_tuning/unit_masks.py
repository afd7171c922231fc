"""Real-valued head and neuron masks, applied through the shared hooks so that gradients reach
them (docs/baselines.md#mask-gradients-and-fisher).

Unlike APT's masks (which skip empty sub-layers and mask hidden dimensions), these are plain
multiplications: a head's mask scales its context slice (the input of the attention output
projection) and a neuron's mask scales its activation (the input of the down projection). An
all-zero layer therefore still adds the output bias before its LayerNorm, which is Mask Tuning's
semantics (docs/baselines.md#materialisation).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .. import hooks
from ..arch import ArchSpec


@contextmanager
def unit_masks(model: nn.Module, spec: ArchSpec,
               head: Sequence[torch.Tensor | None] | None = None,
               neuron: Sequence[torch.Tensor | None] | None = None) -> Iterator[None]:
    """Scale heads by `head[l]` (n_heads,) and neurons by `neuron[l]` (d_ff,); None leaves a layer."""
    handles = []
    for i, layer in enumerate(spec.layers(model)):
        if head is not None and i < len(head) and head[i] is not None:
            handles.append(hooks.scale_heads(spec, layer, lambda m=head[i]: m))
        if neuron is not None and i < len(neuron) and neuron[i] is not None:
            handles.append(hooks.scale_neurons(spec, layer, lambda m=neuron[i]: m))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
