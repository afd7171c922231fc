"""The before-and-after report printed at the end of a pruning run."""

from __future__ import annotations

import statistics

from torch import nn

from .arch import ModelShape, get_spec
from .counting import non_embedding_parameters
from .structure import Structure


def structure_rows(structure: Structure, dense: ModelShape) -> list[dict]:
    """Per layer: heads and neurons, dense against kept."""
    rows = []
    for i, (heads, neurons) in enumerate(zip(structure.heads, structure.neurons)):
        rows.append({"layer": i, "heads": len(heads), "heads_dense": dense.heads[i],
                     "neurons": len(neurons), "neurons_dense": dense.neurons[i]})
    return rows


def format_report(model: nn.Module, structure: Structure, dense: ModelShape, dense_non_embedding: int,
                  ranks: dict[str, int] | None, inference: dict | None, title: str = "APT") -> str:
    spec = get_spec(model)
    kept = non_embedding_parameters(model)
    names = spec.unit_names(model)
    width = max(5, *(len(n) for n in names))
    header = f"{'layer':>{width}} {'heads':>9} {'neurons':>11} {'params':>21}"
    lines = ["", f"{title} before -> after", header]
    for row, layer, name in zip(structure_rows(structure, dense), spec.layers(model), names):
        params = sum(p.numel() for m in _layer_modules(spec, layer) for p in m.parameters(recurse=False))
        lines.append(f"{name:>{width}} {row['heads']:>4}/{row['heads_dense']:<4} "
                     f"{row['neurons']:>5}/{row['neurons_dense']:<5} {params:>21,}")
    lines.append(f"hidden dims kept: {len(structure.hidden)}/{dense.hidden}")
    lines.append(f"non-embedding params: {dense_non_embedding:,} -> {kept:,} "
                 f"(kept {kept / dense_non_embedding:.2%}, from the pruned model's tensors)")
    if ranks:
        values = sorted(ranks.values())
        lines.append(f"adapter ranks at the end: min {values[0]}, median {statistics.median(values):g}, "
                     f"max {values[-1]} over {len(values)} adapters")
    if inference:
        for bs, speed in inference["speedup"].items():
            d, p = inference["dense"][bs], inference["pruned"][bs]
            lines.append(f"inference @ batch {bs} x {inference['seq_len']} tokens: dense "
                         f"{d['samples_per_s']:.1f} -> pruned {p['samples_per_s']:.1f} samples/s "
                         f"({speed:.2f}x)")
    return "\n".join(lines)


def _layer_modules(spec, layer: nn.Module) -> list[nn.Module]:
    mods = list(spec.layer_norms(layer))
    if spec.has_attention(layer):
        a = spec.attention(layer)
        mods += [a.query, a.key, a.value, a.output]
    if spec.has_ffn(layer):
        f = spec.ffn(layer)
        mods += [*f.inputs(), f.down]
    return mods
