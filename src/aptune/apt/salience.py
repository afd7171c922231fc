"""Outlier-aware activation x gradient salience with an EMA (docs/method.md#salience; paper Eqs. 4-5).

Per tapped tensor H (B, T, D) of the current step, with ∂L/∂H from the total loss:
    a_d = Σ_{b,t} |H|,  g_d = Σ_{b,t} |∂L/∂H|,  S̃_d = a_d · g_d       (summed *before* the product)
Heads sum S̃ over their d_h features at the attention-output input; neurons take S̃ at the FFN
down-projection input; hidden dims sum S̃ over the residual taps. The outlier term adds
√max(Kurt(O), 0) with O = W_eff ⊙ x̄ (docs/method.md#outlier-term). The EMA S̄ ← β·S̄ + (1-β)·Ŝ
runs once per step (docs/method.md#salience-ema).
Under several processes a, g and x̄ are summed across ranks before use, so every rank scores alike.
All of this stays on the device: nothing here reads a value back per step (the score terms that
the pruning log records are read when it records them), so GPU steps are not serialised.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..arch import ArchSpec
from ..lora import LoRALinear
from ..structure import Structure


def excess_kurtosis(v: torch.Tensor, dim: int = -1, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Fisher kurtosis mean(z⁴) - 3 along `dim`, z standardised with the unbiased std; z = 0 if std = 0.
    `weight` (0/1, broadcastable to v) keeps only its 1 entries: the kurtosis of the kept entries
    alone, computed without selecting them (no data-dependent shape, so no wait for the device).
    Computed as Σd⁴ / (n·var²) - 3 with d = v - mean, squaring d in place: APT scores every tapped
    projection at every step, and these six passes over each matrix took a third of the time that
    forming z did (docs/method.md#outlier-term)."""
    dtype = v.dtype
    v = v.double()  # float32 rounding makes a constant vector look non-constant
    if weight is None:
        n = torch.full((), v.shape[dim], dtype=v.dtype, device=v.device)  # entries per slice
        kept = v
    else:
        w = weight.to(v.dtype)
        n = w.expand_as(v).sum(dim, keepdim=True)  # kept entries per slice
        kept = v * w  # (v's shape) the dropped entries read 0
    mean = kept.sum(dim, keepdim=True) / n.clamp_min(1)
    low, high = torch.aminmax(kept, dim=dim, keepdim=True)
    tiny = 1e-12 * torch.maximum(high, -low).clamp_min(1e-300)  # a spread below this is rounding
    d = v - mean  # (v's shape)
    if weight is not None:
        d.mul_(w)
    m2 = d.mul_(d).sum(dim, keepdim=True)  # Σd², d now holds d²
    m4 = d.mul_(d).sum(dim, keepdim=True)  # Σd⁴
    var = m2 / (n - 1).clamp_min(1)
    spread = var.sqrt() > tiny
    kurt = torch.where(spread, m4 / (n.clamp_min(1) * var.square()).clamp_min(1e-300), torch.zeros_like(m4))
    return (kurt - 3.0).squeeze(dim).to(dtype)


def effective_weight(linear: nn.Linear) -> torch.Tensor:
    w = linear.weight
    return w + linear.delta_weight() if isinstance(linear, LoRALinear) else w  # (d_out, d_in)


class _Tap:
    """Sums |H| and |∂L/∂H| over batch and positions for one tapped tensor."""

    def __init__(self, collector: "SalienceCollector") -> None:
        self.collector = collector
        self.act: torch.Tensor | None = None  # (D,)
        self.grad: torch.Tensor | None = None  # (D,)
        self.mean_sum: torch.Tensor | None = None  # Σ_{b,t} H, for x̄
        self.rows = 0  # B·T seen by this process
        self.all_rows: torch.Tensor | None = None  # (1,) B·T summed over processes, on the device

    def observe(self, h: torch.Tensor) -> None:
        if not self.collector.active or not torch.is_grad_enabled():
            return
        flat = h.detach().reshape(-1, h.shape[-1])  # (B·T, D)
        act = flat.abs().sum(0)  # (D,)
        if self.collector.per_stream_mean and h.dim() == 3:
            act = act / h.shape[1]  # Σ_b mean_t |H|: this stream's length divided out
        self.act = _add(self.act, act)
        if self.collector.use_kurtosis:  # x̄ feeds the outlier term only: no pass over H without it
            self.mean_sum = _add(self.mean_sum, flat.sum(0))
        self.rows += flat.shape[0]
        if h.requires_grad:
            h.register_hook(self._on_grad)

    def _on_grad(self, grad: torch.Tensor) -> None:
        self.grad = _add(self.grad, grad.detach().reshape(-1, grad.shape[-1]).abs().sum(0))

    def reset(self) -> None:
        self.act = self.grad = self.mean_sum = self.all_rows = None
        self.rows = 0


def _add(acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x.float() if acc is None else acc + x.float()


class SalienceCollector:
    """Registers the taps on a model and turns one step's observations into block scores."""

    def __init__(self, model: nn.Module, spec: ArchSpec, use_kurtosis: bool = True,
                 beta: float = 0.85, position_norm: str = "auto",
                 outlier_scale: str = "salience_total", outlier_weight: float = 1.0) -> None:
        self.model, self.spec = model, spec
        self.use_kurtosis, self.beta = use_kurtosis, beta
        self.outlier_scale, self.outlier_weight = outlier_scale, outlier_weight
        if position_norm == "auto":  # the original code's rule: per stream on encoder-decoders
            position_norm = "per_stream_mean" if len(spec.stacks(model)) > 1 else "sum"
        self.per_stream_mean = position_norm == "per_stream_mean"
        self.active = False
        self.ema: dict[str, list[torch.Tensor]] | None = None
        self._handles: list = []
        self.last_components = {}
        self.attach()

    @property
    def last_components(self) -> dict[str, float]:
        """The last step's score split into its terms, per block type (the pruning log records it).
        Kept as device tensors until read here, at pruning points and checkpoints."""
        return {k: float(v) for k, v in self._components.items()}

    @last_components.setter
    def last_components(self, values: dict[str, float | torch.Tensor]) -> None:
        self._components = dict(values)

    # -- hooks -------------------------------------------------------------------------------
    def attach(self) -> None:
        """(Re)register taps on the model's current structure (call after physical removal)."""
        self.detach()
        spec, model = self.spec, self.model
        self.head_taps, self.neuron_taps, self.hidden_taps = [], [], []
        layers = spec.layers(model)
        for layer in layers:
            head = _Tap(self) if spec.has_attention(layer) else None
            neuron = _Tap(self) if spec.has_ffn(layer) else None
            self.head_taps.append(head)
            self.neuron_taps.append(neuron)
            if head is not None:
                # Registered after the mask hooks, so it sees the masked context.
                self._pre(spec.attention(layer).output, head)
                self._pre(spec.attention_block(layer), self._hidden_tap(), block_only=True)
            if neuron is not None:
                self._pre(spec.ffn(layer).down, neuron)
                self._pre(spec.ffn_input_block(layer), self._hidden_tap(), block_only=True)
        for end in spec.stream_ends(model):  # each stack's last stream (an encoder-decoder has two)
            final = self._hidden_tap()
            self._handles.append(end.register_forward_hook(
                lambda m, a, out, tap=final: tap.observe(out[0] if isinstance(out, tuple) else out)))
        # The embeddings are frozen, so layer 0's input would carry no gradient: make it a leaf
        # that asks for one while salience is collected.
        for module in spec.embedding_modules(model):
            self._handles.append(module.register_forward_hook(self._leaf_with_grad))

    def _hidden_tap(self) -> _Tap:
        tap = _Tap(self)
        self.hidden_taps.append(tap)
        return tap

    def _pre(self, module: nn.Module, tap: _Tap, block_only: bool = False) -> None:
        """Tap a module's first input. With `block_only`, the module gets an alias of it, so the
        gradient seen is the one through this block alone, not the residual path or a
        distillation loss on the same hidden state (docs/method.md#salience)."""
        spec = self.spec

        def hook(mod, args, kwargs):
            h = spec.block_input(args, kwargs) if block_only else args[0]
            if block_only and self.active and torch.is_grad_enabled() and h.requires_grad:
                h = h.view_as(h)  # a new autograd node: only this block's gradient reaches it
                tap.observe(h)
                return spec.with_block_input(args, kwargs, h)
            tap.observe(h)
            return None
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _leaf_with_grad(self, module, args, output):
        if self.active and torch.is_grad_enabled() and not output.requires_grad:
            return output.detach().requires_grad_(True)
        return output

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- scores ------------------------------------------------------------------------------
    def step_scores(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    alive: dict[str, torch.Tensor] | None = None) -> dict[str, list[torch.Tensor]]:
        """Ŝ per block for this step (per layer lists for heads and neurons; one vector for hidden).
        `alive` (flat bool per block type, as `Masks.alive` gives) limits the outlier term's
        scaling to the blocks still in the model."""
        taps = [t for t in self.head_taps + self.neuron_taps + self.hidden_taps if t is not None]
        if reduce is not None:
            _all_reduce_taps(taps, reduce)
        plain: dict[str, list[torch.Tensor]] = {"head": [], "neuron": [], "hidden": []}
        outlier: dict[str, list[torch.Tensor]] = {"head": [], "neuron": [], "hidden": []}
        hidden_outlier = None  # (d_m,) Σ over output projections of √max(Kurt(O_P[i, :]), 0)
        # The outlier term reads only alive entries of O: a masked unit's column or a masked dim's
        # row would enter the kurtosis as present-but-zero in a masked model and not at all in its
        # compacted self, and the two must score alike.
        live = _LiveUnits(alive if self.use_kurtosis else None)  # only the outlier term reads it
        for layer, htap, ntap in zip(self.spec.layers(self.model), self.head_taps, self.neuron_taps):
            if htap is None:
                plain["head"].append(torch.zeros(0))
                outlier["head"].append(torch.zeros(0))
            else:
                head_dim = self.spec.layer_head_dim(layer)
                proj = self.spec.attention(layer).output
                live_heads = live.take("head", proj.in_features // head_dim)  # (n_h,) or None
                s = _product(htap).view(-1, head_dim).sum(-1)  # (n_h,)
                plain["head"].append(s)
                k = torch.zeros_like(s)
                if self.use_kurtosis and htap.rows:
                    o = _outlier_matrix(proj, htap)  # (d_m, n_h·d_h)
                    rows = live.hidden_rows(o.shape[0], o.shape[1])  # (d_m, n_h·d_h) or None
                    k = _root_kurtosis(_by_head(o, head_dim),  # (n_h,) over each head's column block
                                       weight=None if rows is None else _by_head(rows, head_dim))
                    cols = None if live_heads is None else live_heads.repeat_interleave(head_dim)[None, :]
                    hidden_outlier = _add(hidden_outlier, _root_kurtosis(o, dim=1, weight=cols))
                outlier["head"].append(k)
            if ntap is None:
                plain["neuron"].append(torch.zeros(0))
                outlier["neuron"].append(torch.zeros(0))
            else:
                proj = self.spec.ffn(layer).down
                live_neurons = live.take("neuron", proj.in_features)  # (n_f,) or None
                s = _product(ntap)  # (n_f,)
                plain["neuron"].append(s)
                k = torch.zeros_like(s)
                if self.use_kurtosis and ntap.rows:
                    o = _outlier_matrix(proj, ntap)  # (d_m, n_f)
                    k = _root_kurtosis(o, dim=0, weight=live.hidden_rows(o.shape[0], 1))  # (n_f,)
                    cols = None if live_neurons is None else live_neurons[None, :]  # (1, n_f)
                    hidden_outlier = _add(hidden_outlier, _root_kurtosis(o, dim=1, weight=cols))
                outlier["neuron"].append(k)
        plain_hidden = sum(_product(t) for t in self.hidden_taps)  # (d_m,)
        plain["hidden"].append(plain_hidden)
        outlier["hidden"].append(hidden_outlier if hidden_outlier is not None
                                 else torch.zeros_like(plain_hidden))
        scores: dict[str, list[torch.Tensor]] = {}
        components: dict[str, torch.Tensor] = {}
        for t in plain:
            added = self._scaled_outlier(plain[t], outlier[t], None if alive is None else alive[t])
            scores[t] = [p + k for p, k in zip(plain[t], added)]
            # Summed in float64 on the device: read only when the pruning log records them.
            components[f"{t}_activation_gradient"] = sum(_total(p) for p in plain[t])
            components[f"{t}_kurtosis"] = sum(_total(k) for k in added)
            components[f"{t}_kurtosis_unscaled"] = sum(_total(k) for k in outlier[t])
        self.last_components = components
        for tap in taps:
            tap.reset()
        return scores

    def _scaled_outlier(self, plain: list[torch.Tensor], outlier: list[torch.Tensor],
                        alive: torch.Tensor | None) -> list[torch.Tensor]:
        """The outlier term as it is added to one block type's scores (docs/method.md#outlier-term).
        raw: √max(Kurt, 0) as paper Eq. 5 adds it. salience_total: rescaled by one factor per
        block type, so that over the alive blocks it sums to `outlier_weight` times the
        activation × gradient salience: it reorders blocks within their type and leaves the
        balance between heads, neurons and hidden dims to S̃. Stays on the device."""
        if not self.use_kurtosis:
            return outlier  # zeros
        if self.outlier_scale == "raw":
            return [k * self.outlier_weight for k in outlier]
        p, k = torch.cat([v.float() for v in plain]), torch.cat([v.float() for v in outlier])  # (N,)
        if alive is not None:
            live = alive.to(k.device).float()  # (N,)
            p, k = p * live, k * live
        p_total, k_total = p.sum(), k.sum()  # scalars on the device
        factor = torch.where(k_total > 0, p_total / k_total.clamp_min(1e-30), torch.zeros_like(k_total))
        scaled = k * (factor * self.outlier_weight)  # (N,); dead blocks get 0
        return list(torch.split(scaled, [v.numel() for v in outlier]))

    def flat_ema(self) -> dict[str, torch.Tensor]:
        """S̄ per block type as one vector over all layers, as the keep-set search takes it."""
        ema = self.ema
        return {"head": torch.cat(ema["head"]), "neuron": torch.cat(ema["neuron"]),
                "hidden": ema["hidden"][0]}

    def keep_units(self, kept: Structure) -> None:
        """After a compaction that kept `kept`: the EMA follows the surviving units."""
        if self.ema is None:
            return
        ema = self.ema
        ema["head"] = [e[torch.as_tensor(h, dtype=torch.long)] if e.numel() else e
                       for e, h in zip(ema["head"], kept.heads)]
        ema["neuron"] = [e[torch.as_tensor(n, dtype=torch.long)] if e.numel() else e
                         for e, n in zip(ema["neuron"], kept.neurons)]
        ema["hidden"] = [ema["hidden"][0][torch.as_tensor(kept.hidden, dtype=torch.long)]]

    def update_ema(self, scores: dict[str, list[torch.Tensor]]) -> None:
        if self.ema is None:
            self.ema = {k: [torch.zeros_like(v) for v in vs] for k, vs in scores.items()}
        for k, vs in scores.items():
            for old, new in zip(self.ema[k], vs):
                old.mul_(self.beta).add_(new.to(old.device), alpha=1 - self.beta)


def _root_kurtosis(v: torch.Tensor, dim: int = -1, weight: torch.Tensor | None = None) -> torch.Tensor:
    return excess_kurtosis(v, dim, weight).clamp_min(0).sqrt()  # √max(Kurt, 0)


def _by_head(o: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(d_m, n_h·d_h) -> (n_h, d_m·d_h): each head's column block as one row."""
    d_m, n_h = o.shape[0], o.shape[1] // head_dim
    return o.reshape(d_m, n_h, head_dim).transpose(0, 1).reshape(n_h, d_m * head_dim)


class _LiveUnits:
    """`Masks.alive`'s flat vectors, handed out layer by layer as 0/1 floats (None: all alive).
    Slices by host-side counts, so nothing is read from the device."""

    def __init__(self, alive: dict[str, torch.Tensor] | None) -> None:
        self.alive, self.offsets = alive, {"head": 0, "neuron": 0}
        self.hidden = None if alive is None else alive["hidden"].float()  # (d_m,)

    def take(self, kind: str, count: int) -> torch.Tensor | None:
        start = self.offsets[kind]
        self.offsets[kind] = start + count
        return None if self.alive is None else self.alive[kind][start:start + count].float()  # (count,)

    def hidden_rows(self, d_m: int, width: int) -> torch.Tensor | None:
        return None if self.hidden is None else self.hidden[:, None].expand(d_m, width)  # (d_m, width)


def _total(v: torch.Tensor) -> torch.Tensor:
    """Σ v as a float64 scalar on v's device: exactly the float that reading the float32 sum gave."""
    return v.sum().double()


def _product(tap: _Tap) -> torch.Tensor:
    if tap.act is None:
        return torch.zeros(0)
    grad = tap.grad if tap.grad is not None else torch.zeros_like(tap.act)
    return tap.act * grad  # (D,)


def _outlier_matrix(proj: nn.Linear, tap: _Tap) -> torch.Tensor:
    rows = max(tap.rows, 1) if tap.all_rows is None else tap.all_rows.clamp_min(1)  # int or (1,)
    x_mean = tap.mean_sum / rows  # (D_in,)
    with torch.no_grad():
        return effective_weight(proj).float() * x_mean[None, :]  # (d_m, D_in)


def _all_reduce_taps(taps: list[_Tap], reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Sum every tap's vectors across processes in one collective call, on the taps' device: a copy
    to the host, or reading the row count back, would wait for the device at every step."""
    device = next((v.device for t in taps for v in (t.act, t.grad, t.mean_sum) if v is not None),
                  torch.device("cpu"))
    parts, shapes = [], []
    for t in taps:
        for name in ("act", "grad", "mean_sum"):
            v = getattr(t, name)
            parts.append(v.float().flatten() if v is not None else torch.zeros(0, device=device))
            shapes.append(parts[-1].numel())
        parts.append(torch.full((1,), float(t.rows), device=device))  # filled on the device, no copy
        shapes.append(1)
    flat = reduce(torch.cat(parts))  # (Σ shapes,)
    it = iter(torch.split(flat, shapes))
    for t in taps:
        for name in ("act", "grad", "mean_sum"):
            v = next(it)
            if v.numel():
                setattr(t, name, v.clone())
        t.all_rows = next(it).clone()  # (1,); t.rows stays this process's count, > 0 where any is
