"""Layer-wise mask rescaling by damped least squares (docs/baselines.md#mask-rescaling).

For each unit in order, the kept heads' (then neurons') mask values are re-solved so that the
student sub-layer's pre-LayerNorm output (with a pre-norm family: its residual output) matches
the teacher's on the calibration data, over the tokens of the unit's stream (an encoder-decoder's
decoder units: the target positions):

    MHA:  y ≈ Σ_h m_h a_h + b_O + X^S,   a_h = head h's context through its W_O columns
    FFN:  y ≈ W_2 diag(m) h_S + b_2 + u_S

The normal equations are accumulated batch by batch, and LSMR (damp 1) solves for the deviation
from 1. The student stream uses the scales already tuned for earlier layers, so corrections
propagate. A failed solve or a scale outside [-10, 10] stops the tuning, as in the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..arch import ArchSpec
from .layout import UnitLayout
from .unit_masks import unit_masks


class _Stop(Exception):
    """Raised by a capture hook: nothing after the captured layer is needed."""


@dataclass
class RescaleResult:
    head: torch.Tensor  # (U, H) tuned mask values, 0 for pruned units
    neuron: torch.Tensor  # (U, F)
    tuned: list[str] = field(default_factory=list)  # e.g. ["ffn0", "mha1", "ffn1", ...]
    stopped: str | None = None  # why tuning stopped early, if it did


def lsmr_scales(normal: torch.Tensor, rhs: torch.Tensor) -> tuple[np.ndarray, bool]:
    """Solve normal·m = rhs for m around 1 with LSMR (damp 1, atol = btol = 1e-6, conlim 1e8)."""
    from scipy.sparse.linalg import lsmr

    a = normal.detach().double().cpu().numpy()
    b = rhs.detach().double().cpu().numpy() - a @ np.ones(a.shape[0])
    # SciPy's default iteration cap is min(m, n): on a 13 x 13 system LSMR can need a few more
    # steps than that in floating point and would stop at istop 7 ("failed") one step short of
    # convergence (measured on MiniLM SST-2). APT's port of Mask Tuning passes 100000 as well.
    delta, istop = lsmr(a, b, damp=1.0, atol=1e-6, btol=1e-6, conlim=1e8, maxiter=100_000)[:2]
    return 1.0 + delta, istop < 3


class _Capture:
    """Hooks that record one layer's sub-layer inputs during a forward pass, then stop it."""

    def __init__(self, model: nn.Module, spec: ArchSpec, layer_index: int, part: str) -> None:
        layer = spec.layers(model)[layer_index]
        self.spec = spec
        self.values: dict[str, torch.Tensor] = {}
        block, inner = ((spec.attention_block(layer), spec.attention(layer).output) if part == "mha"
                        else (spec.ffn_input_block(layer), spec.ffn(layer).down))
        self.handles = [block.register_forward_pre_hook(self._record("residual"), with_kwargs=True),
                        inner.register_forward_pre_hook(self._record("inner", stop=True), with_kwargs=True)]

    def _record(self, key: str, stop: bool = False):
        def hook(module, args, kwargs):
            # The block's residual input, or the projection's (positional) input.
            x = self.spec.block_input(args, kwargs) if key == "residual" else args[0]
            self.values[key] = x.detach()
            if stop:
                raise _Stop
        return hook

    def run(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        try:
            model(**batch)
        except _Stop:
            pass
        finally:
            for h in self.handles:
                h.remove()
        return self.values


def _capture(model, spec, layer_index, part, batch, head, neuron) -> dict[str, torch.Tensor]:
    """One forward pass under masks, stopped once layer `layer_index`'s `part` has been seen.

    The mask hooks are registered first, so the captured inner input is already masked.
    """
    device = next(model.parameters()).device
    head = [h.to(device) if h is not None else None for h in head]
    neuron = [n.to(device) if n is not None else None for n in neuron]
    with unit_masks(model, spec, head, neuron):
        return _Capture(model, spec, layer_index, part).run(model, batch)


def _rows(x: torch.Tensor, attention_mask: torch.Tensor, first_token_only: bool) -> torch.Tensor:
    """(B, T, d) -> (rows, d): the non-padding tokens, or only the first token of each example."""
    if first_token_only:
        return x[:, 0]
    return x[attention_mask.bool()]


def _stream_mask(batch: dict, stream: int) -> torch.Tensor:
    """(B, T) real-token mask of a unit's stream: the inputs, or a decoder's target positions."""
    if stream == 0:
        return batch["attention_mask"]
    if batch.get("decoder_attention_mask") is not None:
        return batch["decoder_attention_mask"]
    return batch["labels"] != -100


@torch.no_grad()
def rescale_masks(model: nn.Module, spec: ArchSpec, batches: list[dict[str, torch.Tensor]],
                  head: torch.Tensor, neuron: torch.Tensor, teacher_head: torch.Tensor,
                  teacher_neuron: torch.Tensor, classification: bool = True) -> RescaleResult:
    """Tune the kept entries of binary masks head (U, H) and neuron (U, F) unit by unit (the
    first attention of each stack is left as it is, as in the original)."""
    model.eval()
    layout = UnitLayout.of(model, spec)
    head, neuron = head.detach().float().cpu().clone(), neuron.detach().float().cpu().clone()
    t_head = layout.per_unit(teacher_head.float().cpu(), "head")
    t_neuron = layout.per_unit(teacher_neuron.float().cpu(), "neuron")
    result = RescaleResult(head, neuron)
    for i in range(layout.n_units):
        kept_heads = torch.nonzero(head[i, :layout.heads[i]]).flatten()
        if not layout.first_of_stack[i] and kept_heads.numel() > 0:
            normal, rhs = _mha_normal_equations(model, spec, batches, i, head, neuron, layout,
                                                t_head, t_neuron, kept_heads)
            scales, ok = lsmr_scales(normal, rhs)
            scales = scales[:-1]  # the free constant column is discarded
            result.stopped = _rejection(f"mha{i}", scales, ok)
            if result.stopped:
                break
            head[i, kept_heads] *= torch.as_tensor(scales, dtype=head.dtype)
            result.tuned.append(f"mha{i}")
        kept_neurons = torch.nonzero(neuron[i, :layout.neurons[i]]).flatten()
        if kept_neurons.numel() > 0:
            first_only = classification and i == layout.n_units - 1
            normal, rhs = _ffn_normal_equations(model, spec, batches, i, head, neuron, layout,
                                                t_head, t_neuron, kept_neurons, first_only)
            scales, ok = lsmr_scales(normal, rhs)
            result.stopped = _rejection(f"ffn{i}", scales, ok)
            if result.stopped:
                break
            neuron[i, kept_neurons] *= torch.as_tensor(scales, dtype=neuron.dtype)
            result.tuned.append(f"ffn{i}")
    return result


def _rejection(sublayer: str, scales: np.ndarray, ok: bool) -> str | None:
    """The original's stop rule: a failed solve, or any scale outside [-10, 10] (or not finite)."""
    if not ok:
        return f"{sublayer}: LSMR did not converge"
    if not np.isfinite(scales).all() or np.abs(scales).max() > 10:
        return f"{sublayer}: scale {np.abs(scales).max():.2f} outside [-10, 10]"
    return None


def _student_masks(head, neuron, layout: UnitLayout, i, part):
    """Student masks for capturing unit i: earlier units tuned; unit i's own heads or neurons
    unmasked for the captured part (the per-unit contributions are formed explicitly)."""
    heads = [h if j < i or (j == i and part == "ffn") else None
             for j, h in enumerate(layout.per_unit(head, "head"))]
    neurons = [n if j < i else None for j, n in enumerate(layout.per_unit(neuron, "neuron"))]
    return heads, neurons


def _mha_normal_equations(model, spec, batches, i, head, neuron, layout, t_head, t_neuron, kept):
    layer = spec.layers(model)[i]
    out = spec.attention(layer).output
    head_dim = spec.layer_head_dim(layer)
    w = out.weight.t().view(-1, head_dim, out.out_features)[kept]  # (k, d_h, d)
    bias = out.bias if out.bias is not None else 0
    n = kept.numel() + 1
    normal = torch.zeros(n, n, dtype=torch.float64)
    rhs = torch.zeros(n, dtype=torch.float64)
    s_head, s_neuron = _student_masks(head, neuron, layout, i, "mha")
    for batch in batches:
        mask = _stream_mask(batch, layout.streams[i])
        teacher = _capture(model, spec, i, "mha", batch, t_head, t_neuron)
        target = out(teacher["inner"]) + teacher["residual"]
        target = _rows(target, mask, False)  # (rows, d) teacher pre-LN output
        student = _capture(model, spec, i, "mha", batch, s_head, s_neuron)
        ctx = _rows(student["inner"], mask, False)  # (rows, n_h·d_h)
        residual = _rows(student["residual"], mask, False)  # (rows, d)
        per_head = ctx.view(ctx.shape[0], -1, head_dim)[:, kept]  # (rows, k, d_h)
        contrib = torch.einsum("rkh,khd->rkd", per_head, w)  # (rows, k, d)
        a = contrib.permute(0, 2, 1).reshape(-1, kept.numel())  # (rows·d, k)
        a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)  # (rows·d, k+1)
        b = (target - bias - residual).reshape(-1)  # (rows·d,)
        a, b = a.double(), b.double()  # the Gram sums run over many rows: accumulate in float64
        normal += (a.t() @ a).cpu()  # LSMR (SciPy) runs on the CPU
        rhs += (a.t() @ b).cpu()
    return normal, rhs


def _ffn_normal_equations(model, spec, batches, i, head, neuron, layout, t_head, t_neuron, kept,
                          first_only):
    layer = spec.layers(model)[i]
    down = spec.ffn(layer).down
    w_sel = down.weight.t()[kept]  # (k, d): kept rows of W_2ᵀ
    gram_w = w_sel @ w_sel.t()  # (k, k)
    bias = down.bias if down.bias is not None else 0
    normal = torch.zeros(kept.numel(), kept.numel(), dtype=torch.float64)
    rhs = torch.zeros(kept.numel(), dtype=torch.float64)
    s_head, s_neuron = _student_masks(head, neuron, layout, i, "ffn")
    for batch in batches:
        mask = _stream_mask(batch, layout.streams[i])
        teacher = _capture(model, spec, i, "ffn", batch, t_head, t_neuron)
        target = down(teacher["inner"]) + teacher["residual"]
        target = _rows(target, mask, first_only)  # (rows, d)
        student = _capture(model, spec, i, "ffn", batch, s_head, s_neuron)
        h = _rows(student["inner"], mask, first_only)[:, kept]  # (rows, k)
        residual = _rows(student["residual"], mask, first_only)  # (rows, d)
        h, gap = h.double(), (target - bias - residual).double()
        normal += (gram_w.double() * (h.t() @ h)).cpu()
        rhs += (h * (gap @ w_sel.t().double())).sum(0).cpu()  # (k,)
    return normal, rhs
