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

    # -- what masks and surgery need -------------------------------------------------------------
    def attention_block(self, layer: nn.Module) -> nn.Module:
        """The whole attention sub-layer (projections, output, residual norm)."""
        raise NotImplementedError

    def ffn_output_block(self, layer: nn.Module) -> nn.Module:
        """The module that adds the FFN output to the residual stream (takes `input_tensor`)."""
        raise NotImplementedError

    def skip_attention(self, layer: nn.Module) -> None:
        """Replace a fully pruned attention sub-layer by the identity on the residual stream."""
        raise NotImplementedError

    def skip_ffn(self, layer: nn.Module) -> None:
        """Replace a fully pruned FFN sub-layer by the identity on the residual stream."""
        raise NotImplementedError

    def ffn_input_block(self, layer: nn.Module) -> nn.Module:
        """The first module of the FFN sub-layer; its input is the post-attention stream."""
        raise NotImplementedError

    def set_num_heads(self, layer: nn.Module, n_heads: int) -> None:
        raise NotImplementedError

    def layer_head_dim(self, layer: nn.Module) -> int:
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

    def max_positions(self, model: nn.Module) -> int:
        """The longest input the position embeddings allow."""
        return int(model.config.max_position_embeddings)

    def non_embedding_modules(self, model: nn.Module) -> Iterator[nn.Module]:
        """Attention and FFN projections plus the LayerNorms of every layer (protocol.md)."""
        for layer in self.layers(model):
            if self.has_attention(layer):
                attn = self.attention(layer)
                yield from (attn.query, attn.key, attn.value, attn.output)
            if self.has_ffn(layer):
                ffn = self.ffn(layer)
                yield from (ffn.up, ffn.down)
            yield from self.layer_norms(layer)

    def has_attention(self, layer: nn.Module) -> bool:
        return not isinstance(self.attention_block(layer), SkippedSublayer)

    def has_ffn(self, layer: nn.Module) -> bool:
        return not isinstance(self.ffn_output_block(layer), SkippedSublayer)


class SkippedSublayer(nn.Module):
    """A fully pruned sub-layer: returns the residual stream unchanged (apt-method.md §2.3).

    `returns` picks the argument to return: 0 for an attention block called as f(hidden, ...),
    1 for an output block called as f(ffn_hidden, input_tensor). `tuple_output` wraps it as the
    (output, attention_weights) pair that attention blocks return.
    """

    def __init__(self, returns: int = 0, tuple_output: bool = False) -> None:
        super().__init__()
        self.returns = returns
        self.tuple_output = tuple_output

    def forward(self, *args, **kwargs):
        out = args[self.returns] if len(args) > self.returns else kwargs.get(
            "hidden_states" if self.returns == 0 else "input_tensor")
        return (out, None) if self.tuple_output else out

    def extra_repr(self) -> str:
        return f"returns=arg{self.returns}"
