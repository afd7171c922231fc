"""ArchSpec: the one place that knows where a model family keeps its parts.

Everything else (adapters, masks, counting, surgery) asks the spec, so a new family is a new
spec file and no change elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import nn


@dataclass(frozen=True)
class AttentionParts:
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear


@dataclass(frozen=True)
class FFNParts:
    up: nn.Linear
    down: nn.Linear


class ArchSpec:
    """Describes one model family. Subclasses fill in the module paths."""

    family: str = ""
    model_types: tuple[str, ...] = ()
    # Default LoRA targets (module-name suffixes), as in the paper's baselines.
    lora_target_modules: tuple[str, ...] = ()
    # Default APT adapter targets.
    apt_target_modules: tuple[str, ...] = ()
    # Task-head modules that are newly initialised and trained by every method.
    head_modules: tuple[str, ...] = ()

    def backbone(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def layers(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def attention(self, layer: nn.Module) -> AttentionParts:
        raise NotImplementedError

    def ffn(self, layer: nn.Module) -> FFNParts:
        raise NotImplementedError

    def layer_norms(self, layer: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def embeddings(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def num_heads(self, model: nn.Module) -> int:
        return int(model.config.num_attention_heads)

    def head_dim(self, model: nn.Module) -> int:
        cfg = model.config
        return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    def non_embedding_modules(self, model: nn.Module) -> Iterator[nn.Module]:
        """Attention and FFN projections plus the LayerNorms of every layer (protocol.md)."""
        for layer in self.layers(model):
            attn = self.attention(layer)
            yield from (attn.query, attn.key, attn.value, attn.output)
            ffn = self.ffn(layer)
            yield from (ffn.up, ffn.down)
            yield from self.layer_norms(layer)
