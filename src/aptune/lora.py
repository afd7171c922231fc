"""LoRA adapters with PEFT's names: inject, count, merge_and_unload.

A LoRALinear *is* an nn.Linear (same `weight`/`bias` names), so state dicts of the frozen base
keep their keys, and merging is replacing the module by a plain nn.Linear.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import AptuneError


class LoRALinear(nn.Linear):
    """y = x Wᵀ + b + s · (x A ᵀ) Bᵀ, with W and b frozen; A is (r, d_in), B is (d_out, r)."""

    def __init__(self, in_features: int, out_features: int, r: int, lora_alpha: float,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if r <= 0:
            raise AptuneError(f"LoRA rank r must be positive, got {r}", "pass r >= 1")
        self.r = r
        self.lora_alpha = lora_alpha
        self.scaling = lora_alpha / r  # fixed at creation: APT keeps s = 2 as ranks grow
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's init; B = 0 makes a no-op
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, lora_alpha: float) -> "LoRALinear":
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, r, lora_alpha,
                  bias=linear.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(w)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)  # (d_out, r) @ (r, d_in) -> (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (N, d_in)
        base = F.linear(rows, self.weight, self.bias)  # (N, d_out)
        down = F.linear(rows, self.lora_A)  # (N, r)
        # base + s·down·Bᵀ in one GEMM: the sum and the scaling cost no pass over (N, d_out) of
        # their own, forward or backward (about 10% of a q/v projection's step on CPU)
        out = torch.addmm(base, down, self.lora_B.t(), alpha=self.scaling)  # (N, d_out)
        return out.view(*x.shape[:-1], out.shape[-1])  # (..., d_out)

    def merged_linear(self) -> nn.Linear:
        w = self.weight
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w + self.delta_weight())
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    @torch.no_grad()
    def grow_rank(self, new_r: int, init: str = "gaussian", generator: torch.Generator | None = None
                  ) -> tuple[nn.Parameter, nn.Parameter]:
        """Grow to rank `new_r` in place without changing the output (docs/method.md#rank-growth).

        New A rows ~ N(0, 1/(3·d_in)) (the variance of LoRA's Kaiming-uniform init) or
        Kaiming-uniform; new B columns are 0. The scaling stays fixed (APT's s = 2), and the
        existing rows and columns are kept exactly. Returns the old (A, B) for optimizer-state moves.
        """
        old_a, old_b = self.lora_A, self.lora_B
        extra = new_r - self.r
        if extra <= 0:
            return old_a, old_b
        rows = torch.empty(extra, self.in_features, dtype=old_a.dtype)
        if init == "gaussian":
            rows.normal_(0.0, (1.0 / (3.0 * self.in_features)) ** 0.5, generator=generator)
        else:
            bound = 1.0 / self.in_features ** 0.5
            rows.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(torch.cat([old_a, rows.to(old_a.device)], 0),
                                   requires_grad=old_a.requires_grad)  # (r', d_in)
        zeros = torch.zeros(self.out_features, extra, dtype=old_b.dtype, device=old_b.device)
        self.lora_B = nn.Parameter(torch.cat([old_b, zeros], 1), requires_grad=old_b.requires_grad)
        self.r = new_r
        return old_a, old_b

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, lora_alpha={self.lora_alpha}"


def _matches(name: str, targets: Iterable[str]) -> bool:
    """PEFT's rule: a target matches the full name or a dotted suffix of it; regex if it has ^ or $."""
    for t in targets:
        if t.startswith("^") or t.endswith("$"):
            if re.search(t, name):
                return True
        elif name == t or name.endswith("." + t):
            return True
    return False


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def inject_lora(model: nn.Module, r: int, lora_alpha: float, target_modules: Iterable[str],
                trainable_modules: Iterable[str] = ()) -> list[str]:
    """Freeze everything, wrap the matching Linear layers, unfreeze the listed head modules."""
    targets = list(target_modules)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear) and _matches(n, targets)]
    if not names:
        raise AptuneError(
            f"target_modules {targets} match no nn.Linear in the model",
            "use module-name suffixes such as 'query', 'value' or 'attention.self.query' "
            "(see model.named_modules())",
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        linear = model.get_submodule(n)
        if linear.in_features == 0 or linear.out_features == 0:
            continue  # a projection pruned to zero width (Mask Tuning's empty sub-layer) has nothing to adapt
        _set_submodule(model, n, LoRALinear.from_linear(linear, r, lora_alpha))
    unfreeze(model, trainable_modules)
    return names


def unfreeze(model: nn.Module, module_names: Iterable[str]) -> None:
    for name, module in model.named_modules():
        if _matches(name, module_names):
            for p in module.parameters():
                p.requires_grad_(True)


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put back a plain nn.Linear. Returns the model."""
    for name, module in lora_modules(model):
        _set_submodule(model, name, module.merged_linear())
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    line = (f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable%: {100 * trainable / max(total, 1):.4f}")
    print(line)
    return line
