"""Hard-concrete L0 gates of CoFi (docs/baselines.md#hard-concrete-gates;
Louizos et al. 2018).

Five gate groups, one log α per gate:
    head          (L, H)     each head's context vector
    mha           (L,)       the whole attention output of a layer
    intermediate  (L, d_ff)  each FFN neuron's activation
    ffn           (L,)       the whole FFN output of a layer
    hidden        (d,)       each hidden dimension, shared by all layers and the embeddings
Training draws one sample per step for the whole batch (`sample`); evaluation and compaction use
the deterministic gates of docs/baselines.md#deterministic-gates (`deterministic`). A group left
out of `groups` is a constant 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterable

import torch
from torch import nn

from ..arch import ModelShape

# Stretch interval (γ, ζ), temperature β and the uniform's guard ε of the hard-concrete law.
GAMMA = -0.1
ZETA = 1.1
BETA = 2.0 / 3.0
EPSILON = 1e-6
# log α lives in [ln 0.01, ln 100]; the clamp runs after every optimizer step.
LOG_ALPHA_MIN = math.log(1e-2)
LOG_ALPHA_MAX = math.log(1e2)
# Mean of log α at initialisation for every group except the FFN neurons, whose mean comes
# from droprate_init (CoFi issue #51 calls the mismatch "mostly a typo"; kept for fidelity).
COARSE_INIT_MEAN = 10.0
# Wang et al. 2020's factor in the deterministic soft value sigmoid(0.8 · log α / β).
SOFT_FACTOR = 0.8

GROUPS = ("head", "mha", "intermediate", "ffn", "hidden")
LAYER_GROUPS = ("mha", "ffn")  # one scalar gate per layer: kept when P(z ≠ 0) >= 0.5


@dataclass
class CoFiGates:
    """One value per gate, for the whole model. Used for samples, deterministic gates and P(z≠0)."""

    head: torch.Tensor  # (L, H)
    mha: torch.Tensor  # (L,)
    intermediate: torch.Tensor  # (L, d_ff)
    ffn: torch.Tensor  # (L,)
    hidden: torch.Tensor  # (d,)

    def detach(self) -> "CoFiGates":
        return CoFiGates(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def to(self, *args, **kwargs) -> "CoFiGates":
        return CoFiGates(**{f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)})

    def clone(self) -> "CoFiGates":
        return CoFiGates(**{f.name: getattr(self, f.name).clone() for f in fields(self)})

    @property
    def n_layers(self) -> int:
        return int(self.mha.numel())

    def kept_heads(self) -> torch.Tensor:
        """(L, H) bool: a head survives when neither its gate nor its layer's gate is 0."""
        return (self.head * self.mha[:, None]) != 0

    def kept_neurons(self) -> torch.Tensor:
        """(L, d_ff) bool, likewise for FFN neurons."""
        return (self.intermediate * self.ffn[:, None]) != 0

    def kept_hidden(self) -> torch.Tensor:
        return self.hidden != 0  # (d,)


def keep_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z ≠ 0) = 1 − Q(0), with Q(0) = sigmoid(β·log(−γ/ζ) − log α) clamped to [ε, 1 − ε]."""
    q0 = torch.sigmoid(BETA * math.log(-GAMMA / ZETA) - log_alpha).clamp(EPSILON, 1 - EPSILON)
    return 1 - q0


def sample_hard_concrete(log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One differentiable draw per gate: a stretched, clipped binary-concrete variable in [0, 1]."""
    u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype)
    u = u * (1 - 2 * EPSILON) + EPSILON  # U(ε, 1 − ε): keeps log u and log(1 − u) finite
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def soft_value(log_alpha: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(SOFT_FACTOR * log_alpha / BETA)


def deterministic_group(log_alpha: torch.Tensor) -> torch.Tensor:
    """Deterministic gates of one group (the last axis): zero the round(N − Σ P) smallest soft values.

    Kept gates keep their fractional soft value. `log_alpha` (..., N) holds independent groups in
    its leading axes (e.g. each layer's heads).
    """
    la = log_alpha.detach()
    soft = soft_value(la)  # (..., N)
    expected_zeros = la.shape[-1] - keep_probability(la).sum(-1)  # (...,)
    flat_soft = soft.reshape(-1, la.shape[-1])  # (G, N)
    for row, n_zero in zip(flat_soft, expected_zeros.reshape(-1).tolist()):
        n = int(round(n_zero))  # Python's round, as the original: half to even
        if n > 0:
            row[torch.argsort(row, stable=True)[:n]] = 0
    return flat_soft.view_as(soft)


def deterministic_layer_gate(log_alpha: torch.Tensor) -> torch.Tensor:
    """Scalar layer gates: 0 where P(z ≠ 0) < 0.5, else the soft value."""
    la = log_alpha.detach()
    return torch.where(keep_probability(la) < 0.5, torch.zeros_like(la), soft_value(la))


class L0Gates(nn.Module):
    """The log α parameters of every CoFi gate, with sampling, deterministic gates and P(z≠0)."""

    def __init__(self, n_layers: int, n_heads: int, d_model: int, d_ff: int,
                 groups: Iterable[str] = GROUPS, droprate_init: float = 0.5,
                 init_std: float = 0.01, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.groups = tuple(groups)
        unknown = set(self.groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown gate groups {sorted(unknown)}; known: {GROUPS}")
        self.shapes = {"head": (n_layers, n_heads), "mha": (n_layers,),
                       "intermediate": (n_layers, d_ff), "ffn": (n_layers,), "hidden": (d_model,)}
        self.n_layers, self.n_heads, self.d_model, self.d_ff = n_layers, n_heads, d_model, d_ff
        neuron_mean = math.log(1 - droprate_init) - math.log(droprate_init)
        self.log_alpha = nn.ParameterDict()
        for name in self.groups:
            mean = neuron_mean if name == "intermediate" else COARSE_INIT_MEAN
            init = torch.randn(self.shapes[name], generator=generator) * init_std + mean
            self.log_alpha[name] = nn.Parameter(init)

    @classmethod
    def for_shape(cls, shape: ModelShape, **kwargs) -> "L0Gates":
        """Gates sized to a dense model's shape (every layer the same shape, as CoFi assumes)."""
        n_heads, d_ff = shape.uniform()
        return cls(shape.n_layers, n_heads, shape.hidden, d_ff, **kwargs)

    def _ones(self, name: str) -> torch.Tensor:
        ref = next(iter(self.log_alpha.values())) if len(self.log_alpha) else torch.zeros(())
        return torch.ones(self.shapes[name], device=ref.device, dtype=ref.dtype)

    def _per_group(self, fn, layer_fn=None) -> CoFiGates:
        out = {}
        for name in GROUPS:
            if name not in self.log_alpha:
                out[name] = self._ones(name)
            elif layer_fn is not None and name in LAYER_GROUPS:
                out[name] = layer_fn(self.log_alpha[name])
            else:
                out[name] = fn(self.log_alpha[name])
        return CoFiGates(**out)

    def keep_probability(self) -> CoFiGates:
        """P(z ≠ 0) of every gate, differentiable in log α (the expected size needs it)."""
        return self._per_group(keep_probability)

    def sample(self, generator: torch.Generator | None = None) -> CoFiGates:
        """One training sample, shared by the whole batch."""
        return self._per_group(lambda la: sample_hard_concrete(la, generator))

    @torch.no_grad()
    def deterministic(self) -> CoFiGates:
        """Evaluation gates: per layer for heads and neurons, whole vector for hidden
        (docs/baselines.md#deterministic-gates)."""
        return self._per_group(deterministic_group, deterministic_layer_gate)

    @torch.no_grad()
    def clamp_(self) -> None:
        for p in self.log_alpha.values():
            p.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def extra_repr(self) -> str:
        return (f"layers={self.n_layers}, heads={self.n_heads}, d_model={self.d_model}, "
                f"d_ff={self.d_ff}, groups={self.groups}")
