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
    up: nn.Linear  # its output rows are the neurons (the activated branch of a gated FFN)
    down: nn.Linear
    # A gated FFN's second input branch (T5 v1.1's wi_1): its rows are cut with `up`'s.
    linear_branch: nn.Linear | None = None

    def inputs(self) -> tuple[nn.Linear, ...]:
        """The projections whose output rows are the neurons."""
        return (self.up,) if self.linear_branch is None else (self.up, self.linear_branch)


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
    # The task heads (models.HEADS) aptune trains on this family.
    task_heads: tuple[str, ...] = ("sequence-classification", "question-answering")
    # The residual stream's norm: "layer" (mean and variance) or "rms" (T5: no mean, no bias).
    norm_kind: str = "layer"
    # Modelling code (a file beside the spec, torch and transformers only) that lets stock
    # transformers open a pruned model of this family, and its class per model_type; None: none.
    remote_code: tuple[str, dict[str, str]] | None = None

    def check_config(self, config) -> None:
        """Refuse, with an AptuneError, a config of this model_type that the spec cannot describe."""

    # -- where the parts are ---------------------------------------------------------------------
    def layers(self, model: nn.Module) -> list[Any]:
        """The model's sub-layer units in forward order. A unit has at most one attention
        sub-layer and at most one FFN sub-layer; in an encoder a unit is a transformer layer, and
        an encoder-decoder splits each decoder layer into two units (docs/architectures.md)."""
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

    def embedding_norm(self, model: nn.Module) -> nn.Module | None:
        """The norm over the summed embeddings (post-LN families); None for pre-norm ones."""
        raise NotImplementedError

    def embedding_norms(self, model: nn.Module) -> list[nn.Module]:
        """Every embedding norm: one per stack that has one (an encoder-decoder of two BERTs has
        two; T5 none)."""
        norm = self.embedding_norm(model)
        return [] if norm is None else [norm]

    def embedding_modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules whose outputs are where each stack's residual stream starts."""
        return [self.embeddings(model)]

    def final_norms(self, model: nn.Module) -> list[nn.Module]:
        """Norms after the last unit of each stack (pre-norm families); they read the stream."""
        return []

    def residual_writers(self, layer: nn.Module) -> list[nn.Linear]:
        """Projections whose outputs are added to the residual stream: the live sub-layers' output
        projections."""
        out = []
        if self.has_attention(layer):
            out.append(self.attention(layer).output)
        if self.has_ffn(layer):
            out.append(self.ffn(layer).down)
        return out

    def residual_readers(self, layer: nn.Module) -> list[nn.Linear]:
        """Projections that read the residual stream (cross-attention keys and values read the
        encoder output, which has the same hidden dimensions)."""
        out = []
        if self.has_attention(layer):
            attn = self.attention(layer)
            out += [attn.query, attn.key, attn.value]
        if self.has_ffn(layer):
            out += list(self.ffn(layer).inputs())
        return out

    def head_readers(self, model: nn.Module) -> list[nn.Linear]:
        """Task-head projections that read the final hidden state."""
        raise NotImplementedError

    def head_writers(self, model: nn.Module) -> list[nn.Linear]:
        """Task-head projections whose *outputs* are indexed by the hidden dimensions: a BERT LM
        head's transform, whose output the tied word embedding reads."""
        return []

    def head_norms(self, model: nn.Module) -> list[nn.Module]:
        """Norms inside the task head over hidden-dimension-indexed features (the LM transform's)."""
        return []

    # -- stacks: what layer distillation maps --------------------------------------------------
    def stacks(self, model: nn.Module) -> list[list[tuple[int, int]]]:
        """Per stack (the encoder; then the decoder), per transformer layer: the unit holding its
        self-attention and the unit holding its FFN. A layer is alive for distillation while both
        keep something (a decoder's cross-attention does not count)."""
        return [[(i, i) for i in range(len(self.layers(model)))]]

    def stack_hidden_states(self, outputs: Any) -> list[list[torch.Tensor]]:
        """Each stack's per-layer outputs (embeddings excluded) from a forward with
        `output_hidden_states=True`, in `stacks` order."""
        if getattr(outputs, "encoder_hidden_states", None) is not None:
            return [list(outputs.encoder_hidden_states[1:]), list(outputs.decoder_hidden_states[1:])]
        return [list(outputs.hidden_states[1:])]

    def stream_ends(self, model: nn.Module) -> list[nn.Module]:
        """The modules whose outputs are each stack's last residual stream (salience taps them)."""
        return [self.layers(model)[-1]]

    def unit_names(self, model: nn.Module) -> list[str]:
        """How reports name each unit: its layer number, or for an encoder-decoder the stack, the
        layer and the attention kind ("enc 0", "dec 0 self", "dec 0 cross")."""
        stacks = self.stacks(model)
        if len(stacks) == 1:
            return [str(i) for i in range(len(self.layers(model)))]
        names = [""] * len(self.layers(model))
        for prefix, stack in zip(("enc", "dec"), stacks):
            for i, (attention, ffn) in enumerate(stack):
                if attention == ffn:
                    names[attention] = f"{prefix} {i}"
                else:
                    names[attention], names[ffn] = f"{prefix} {i} self", f"{prefix} {i} cross"
        return names

    def unit_streams(self, model: nn.Module) -> list[tuple[int, int]]:
        """Per unit: the stack whose tokens its queries and FFN run on, and the stack whose tokens
        its keys and values run on (0, the encoder's, for a decoder's cross-attention), in the
        same layout as `unit_names`. The inference-cost budget weighs blocks by these lengths."""
        streams = [(0, 0)] * len(self.layers(model))
        for s, stack in enumerate(self.stacks(model)):
            for attention, ffn in stack:
                streams[attention] = (s, s)
                if ffn != attention:  # (cross-attention, FFN) unit of a decoder layer
                    streams[ffn] = (s, 0)
        return streams

    def protected_attention(self, model: nn.Module) -> list[int]:
        """Units whose most salient head is never pruned (T5: the decoder's last cross-attention,
        so the top layer keeps reading the encoder)."""
        return []

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
                          int(self.embedding_tables(model)[0].embedding_dim), self.head_dim(model),
                          self.is_gated(model))

    def is_gated(self, model: nn.Module) -> bool:
        """Whether the FFN has a second input branch (three matrices per neuron)."""
        return self.gated_ffn

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
        """The residual stream a sub-layer block (attention or FFN input block) was called with:
        transformers passes it first, or as `hidden_states`."""
        return args[0] if args else kwargs["hidden_states"]

    def with_block_input(self, args: tuple, kwargs: dict[str, Any],
                         hidden: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
        """The same call with the residual stream replaced by `hidden`."""
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def attention_bypass(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What a skipped attention block returns: its residual input, in the block's output form."""
        raise NotImplementedError

    def skipped_attention_output(self, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        """What a hook-skipped attention block returns, given what it computed (T5 passes on the
        position bias that its first layer computed)."""
        return self.attention_bypass(args, kwargs)

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

    def keep_heads(self, layer: nn.Module, heads: torch.Tensor) -> None:
        """Bookkeeping after surgery kept `heads` (current numbering) of a unit's attention."""
        self.set_num_heads(layer, int(heads.numel()))

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
                yield from (*ffn.inputs(), ffn.down)
            yield from self.layer_norms(layer)
        yield from self.final_norms(model)


def keep_cache_length(cache: Any, hidden: torch.Tensor, head_dim: int, layer_index: int) -> None:
    """A pruned-away decoder self-attention has no keys or values, but its cache entry must still
    grow with the sequence: generation, the causal mask and absolute positions read the past
    length from the cache (layer 0's by default), and an empty entry reads as length 0. One head
    of zeros keeps the count."""
    if cache is None:
        return
    self_cache = getattr(cache, "self_attention_cache", cache)
    zeros = hidden.new_zeros(hidden.shape[0], 1, hidden.shape[1], head_dim)  # (B, 1, q, d_h)
    self_cache.update(zeros, zeros, layer_index)


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
