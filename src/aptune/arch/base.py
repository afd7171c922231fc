"""ArchSpec: the one place that knows where a model family keeps its parts.

Everything else (adapters, hooks, salience, the three pruners, surgery, counting) asks the spec,
so a new family is a new spec file and no change elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .shape import ModelShape


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
    gated_ffn: bool = False
    # Modelling code (a file beside the spec, torch and transformers only) that lets stock
    # transformers open a pruned model of this family, and its class per model_type; None: none.
    remote_code: tuple[str, dict[str, str]] | None = None

    # -- where the parts are ---------------------------------------------------------------------
    def layers(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def attention(self, layer: nn.Module) -> AttentionParts:
        raise NotImplementedError

    def ffn(self, layer: nn.Module) -> FFNParts:
        raise NotImplementedError

    def layer_norms(self, layer: nn.Module) -> list[nn.Module]:
        """The norms of a layer's live sub-layers (they read the residual stream's width)."""
        raise NotImplementedError

    def embeddings(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def embedding_tables(self, model: nn.Module) -> list[nn.Embedding]:
        raise NotImplementedError

    def embedding_norm(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def residual_writers(self, layer: nn.Module) -> list[nn.Linear]:
        """Projections whose outputs are added to the residual stream."""
        raise NotImplementedError

    def residual_readers(self, layer: nn.Module) -> list[nn.Linear]:
        """Projections that read the residual stream."""
        raise NotImplementedError

    def head_readers(self, model: nn.Module) -> list[nn.Linear]:
        """Task-head projections that read the final hidden state."""
        raise NotImplementedError

    # -- shapes ----------------------------------------------------------------------------------
    def head_dim(self, model: nn.Module) -> int:
        """d_h, read from the first layer that still has attention (0 when none has)."""
        live = [layer for layer in self.layers(model) if self.has_attention(layer)]
        return self.layer_head_dim(live[0]) if live else 0

    def layer_head_dim(self, layer: nn.Module) -> int:
        raise NotImplementedError

    def num_heads(self, layer: nn.Module) -> int:
        """Heads of one layer now (0 when its attention sub-layer is gone)."""
        if not self.has_attention(layer):
            return 0
        return self.attention(layer).query.out_features // self.layer_head_dim(layer)

    def num_neurons(self, layer: nn.Module) -> int:
        return self.ffn(layer).up.out_features if self.has_ffn(layer) else 0

    def shape(self, model: nn.Module) -> ModelShape:
        """The model's prunable units now, read from its modules (not from its config)."""
        layers = self.layers(model)
        return ModelShape(tuple(self.num_heads(layer) for layer in layers),
                          tuple(self.num_neurons(layer) for layer in layers),
                          int(self.embedding_norm(model).weight.shape[0]), self.head_dim(model),
                          self.gated_ffn)

    def max_positions(self, model: nn.Module) -> int:
        """The longest input the position embeddings allow."""
        return int(model.config.max_position_embeddings)

    # -- sub-layer blocks: what hooks and surgery act on -----------------------------------------
    def attention_block(self, layer: nn.Module) -> nn.Module:
        """The whole attention sub-layer (projections, output, residual norm)."""
        raise NotImplementedError

    def ffn_input_block(self, layer: nn.Module) -> nn.Module:
        """The first module of the FFN sub-layer; its input is the post-attention stream."""
        raise NotImplementedError

    def ffn_output_block(self, layer: nn.Module) -> nn.Module:
        """The module that returns the stream after the FFN sub-layer."""
        raise NotImplementedError

    def block_input(self, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        """The residual stream a sub-layer block (attention or FFN input block) was called with."""
        raise NotImplementedError

    def with_block_input(self, args: tuple, kwargs: dict[str, Any],
                         hidden: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
        """The same call with the residual stream replaced by `hidden`."""
        raise NotImplementedError

    def attention_bypass(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What a skipped attention block returns: its residual input, in the block's output form."""
        raise NotImplementedError

    def ffn_bypass(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What a skipped FFN output block returns: the residual stream it would have added to."""
        raise NotImplementedError

    def skip_attention(self, layer: nn.Module) -> None:
        """Replace a fully pruned attention sub-layer by the identity on the residual stream."""
        raise NotImplementedError

    def skip_ffn(self, layer: nn.Module) -> None:
        """Replace a fully pruned FFN sub-layer by the identity on the residual stream."""
        raise NotImplementedError

    def set_num_heads(self, layer: nn.Module, n_heads: int) -> None:
        raise NotImplementedError

    def has_attention(self, layer: nn.Module) -> bool:
        return not isinstance(self.attention_block(layer), SkippedSublayer)

    def has_ffn(self, layer: nn.Module) -> bool:
        return not isinstance(self.ffn_output_block(layer), SkippedSublayer)

    def non_embedding_modules(self, model: nn.Module) -> Iterator[nn.Module]:
        """Attention and FFN projections plus the norms of every layer (docs/protocol.md#parameters-kept)."""
        for layer in self.layers(model):
            if self.has_attention(layer):
                attn = self.attention(layer)
                yield from (attn.query, attn.key, attn.value, attn.output)
            if self.has_ffn(layer):
                ffn = self.ffn(layer)
                yield from (ffn.up, ffn.down)
            yield from self.layer_norms(layer)


class SkippedSublayer(nn.Module):
    """A fully pruned sub-layer: returns the residual stream unchanged (docs/method.md#empty-sub-layers).

    `bypass(args, kwargs)` is the family's rule for what the block returns when skipped (an
    ArchSpec's `attention_bypass` or `ffn_bypass`), so that the physically skipped block and the
    hook-skipped one return the same thing.
    """

    def __init__(self, bypass, name: str) -> None:
        super().__init__()
        self.bypass = bypass
        self.name = name

    def forward(self, *args, **kwargs):
        return self.bypass(args, kwargs)

    def extra_repr(self) -> str:
        return f"skipped {self.name}"
