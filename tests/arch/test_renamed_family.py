"""Adding a family touches arch/ only: a model whose modules all have other names than BERT's,
described by one ArchSpec defined here (standing in for a new arch/ file), runs all three
pruners: APT (masks, salience, rank growth, distillation, compaction), CoFi (gates, a short
two-stage run, compaction) and Mask Tuning (search, rescaling, materialisation)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aptune.apt.masks import apply_masks
from aptune.arch import ArchSpec, AttentionParts, FFNParts, SkippedSublayer, register_spec, unregister_spec
from aptune.cofi.apply import apply_gates
from aptune.cofi.compaction import compact_with_gates
from aptune.cofi.gates import CoFiGates, L0Gates
from aptune.config import TrainConfig
from aptune.counting import non_embedding_parameters
from aptune.lora import lora_modules
from aptune.mask_tuning.materialize import materialize
from aptune.mask_tuning.pipeline import MaskTuningConfig, run_mask_tuning
from aptune.mask_tuning.unit_masks import unit_masks
from aptune.methods import get_method
from aptune.structure import recorded_structure
from aptune.surgery import compact
from aptune.tasks import get_task
from aptune.train.loop import LoopConfig, Trainer
from tests.helpers import random_binary_masks, randomize_biases_and_norms

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, SEQ, D, HEADS, DH, FF, LAYERS = 40, 12, 24, 4, 6, 40, 3


# -- a post-norm encoder in which nothing is named as in BERT --------------------------------------
class Mixer(nn.Module):
    """Attention sub-layer: norm(x + proj(attention(x)))."""

    def __init__(self) -> None:
        super().__init__()
        self.n_heads, self.head_dim = HEADS, DH
        self.wq, self.wk, self.wv = (nn.Linear(D, HEADS * DH) for _ in range(3))
        self.proj = nn.Linear(HEADS * DH, D)
        self.post_norm = nn.LayerNorm(D)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, h, T, dh)
        scores = heads(self.wq(x)) @ heads(self.wk(x)).transpose(-1, -2) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e9)  # (B, h, T, T)
        ctx = (scores.softmax(-1) @ heads(self.wv(x))).transpose(1, 2).reshape(B, T, -1)  # (B, T, h·dh)
        return self.post_norm(x + self.proj(ctx))


class MLP(nn.Module):
    """FFN sub-layer: norm(x + fc_out(gelu(fc_in(x))))."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_in, self.fc_out, self.post_norm = nn.Linear(D, FF), nn.Linear(FF, D), nn.LayerNorm(D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_norm(x + self.fc_out(F.gelu(self.fc_in(x))))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mixer, self.mlp = Mixer(), MLP()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.mixer(x, mask))


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.places, self.norm = nn.Embedding(VOCAB, D), nn.Embedding(SEQ, D), nn.LayerNorm(D)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tokens(ids) + self.places(torch.arange(ids.shape[1], device=ids.device)))


class ToyClassifier(nn.Module):
    def __init__(self, num_labels: int = 2) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="toy-renamed", head_dim=DH, num_labels=num_labels)
        self.embed = Embed()
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.head = nn.Linear(D, num_labels)

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False, **_):
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        hidden = [self.embed(input_ids)]
        for block in self.blocks:
            hidden.append(block(hidden[-1], mask))
        logits = self.head(hidden[-1][:, 0])  # (B, n_labels)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits,
                               hidden_states=tuple(hidden) if output_hidden_states else None)


class ToySpec(ArchSpec):
    """Everything aptune needs to know about ToyClassifier: the whole cost of a new family."""

    family = "toy"
    model_types = ("toy-renamed",)
    lora_target_modules = ("mixer.wq", "mixer.wv")
    apt_target_modules = ("mixer.wq", "mixer.wv", "mlp.fc_in")
    head_modules = ("head",)

    def layers(self, model):
        return list(model.blocks)

    def attention(self, layer):
        m = layer.mixer
        return AttentionParts(m.wq, m.wk, m.wv, m.proj)

    def ffn(self, layer):
        return FFNParts(layer.mlp.fc_in, layer.mlp.fc_out)

    def layer_norms(self, layer):
        return ([layer.mixer.post_norm] if self.has_attention(layer) else []) + (
            [layer.mlp.post_norm] if self.has_ffn(layer) else [])

    def embeddings(self, model):
        return model.embed

    def embedding_tables(self, model):
        return [model.embed.tokens, model.embed.places]

    def embedding_norm(self, model):
        return model.embed.norm

    def residual_writers(self, layer):
        return ([layer.mixer.proj] if self.has_attention(layer) else []) + (
            [layer.mlp.fc_out] if self.has_ffn(layer) else [])

    def residual_readers(self, layer):
        m = layer.mixer
        return ([m.wq, m.wk, m.wv] if self.has_attention(layer) else []) + (
            [layer.mlp.fc_in] if self.has_ffn(layer) else [])

    def head_readers(self, model):
        return [model.head]

    def head_dim(self, model):
        return DH

    def layer_head_dim(self, layer):
        return DH

    def set_num_heads(self, layer, n_heads):
        layer.mixer.n_heads = n_heads

    def attention_block(self, layer):
        return layer.mixer

    def ffn_input_block(self, layer):
        return layer.mlp

    def ffn_output_block(self, layer):
        return layer.mlp

    def block_input(self, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        return args[0] if args else kwargs["x"]

    def with_block_input(self, args, kwargs, hidden):
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "x": hidden})

    def attention_bypass(self, args, kwargs):
        return self.block_input(args, kwargs)

    def ffn_bypass(self, args, kwargs):
        return self.block_input(args, kwargs)

    def skip_attention(self, layer):
        layer.mixer = SkippedSublayer(self.attention_bypass, "mixer")

    def skip_ffn(self, layer):
        layer.mlp = SkippedSublayer(self.ffn_bypass, "mlp")


@pytest.fixture(scope="module", autouse=True)
def toy_spec():
    spec = ToySpec()
    register_spec(spec)
    yield spec
    unregister_spec(spec)


def toy_model(seed: int = 0) -> ToyClassifier:
    torch.manual_seed(seed)
    return randomize_biases_and_norms(ToyClassifier(), seed + 1)  # so equivalences are not vacuous


def batches(n: int, size: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Label = whether token 5 appears: learnable, so pruning has a signal to follow."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(6, VOCAB, (size, SEQ), generator=g)
        labels = torch.randint(0, 2, (size,), generator=g)
        ids[labels == 1, 3] = 5
        mask = torch.ones_like(ids)
        mask[0, 9:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]) -> None:
        self.rows = [{k: v[i] for k, v in b.items()} for b in rows for i in range(len(b["labels"]))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def loader(rows: list[dict], batch_size: int = 8) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Rows(rows), batch_size=batch_size, shuffle=False)


def train(model: nn.Module, callbacks: list, epochs: float, lr: float = 5e-3) -> Trainer:
    from accelerate import Accelerator

    trainer = Trainer(model, get_task("sst2"), loader(batches(16)), loader(batches(4, seed=9)),
                      LoopConfig(epochs=epochs, lr=lr, batch_size=8, eval_every=8), Accelerator(cpu=True),
                      callbacks=callbacks, show_progress=False)
    trainer.train()
    return trainer


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_the_spec_reads_the_renamed_model(toy_spec):
    model = toy_model()
    shape = toy_spec.shape(model)
    assert shape.heads == (HEADS,) * LAYERS and shape.neurons == (FF,) * LAYERS
    assert (shape.hidden, shape.head_dim, shape.uniform()) == (D, DH, (HEADS, FF))


# -- APT ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("empty_attention, empty_ffn", [(None, None), (1, 0)])
def test_apt_masked_model_equals_compacted(toy_spec, empty_attention, empty_ffn):
    model = toy_model(1)
    batch = batches(1)[0]
    masks = random_binary_masks(model, toy_spec, 0.6, torch.Generator().manual_seed(3), empty_attention,
                                empty_ffn)
    apply_masks(model, toy_spec, masks)
    masked = logits(model, batch)
    masks.remove_hooks()
    compact(model, toy_spec, masks.kept())
    assert (masked - logits(model, batch)).abs().max() <= 1e-5
    assert toy_spec.shape(model).hidden == int(masks.hidden.sum())


def test_apt_prunes_grows_distils_and_compacts_the_renamed_model(toy_spec):
    model = toy_model(2)
    dense = non_embedding_parameters(model)
    cfg = TrainConfig(method="apt", sparsity=0.6, seed=3, use_kurtosis=True)
    method = get_method("apt")
    model = method.prepare(model, toy_spec, cfg)
    trainer = train(model, method.callbacks(model, toy_spec, cfg), epochs=6)  # 96 steps
    final = method.finalize(trainer.unwrapped_model, toy_spec, cfg)
    settings = method.describe(final, cfg)
    assert not lora_modules(final)
    assert non_embedding_parameters(final) <= 0.4 * dense
    assert settings["pruning_log"] and settings["schedule"]["distill_start"] is not None
    assert any(r > cfg.r for r in settings["final_ranks"].values())
    structure = recorded_structure(final)
    assert structure.to_dict() == settings["structure"]
    shape = toy_spec.shape(final)
    assert shape.hidden == len(structure.hidden)
    assert list(shape.heads) == [len(h) for h in structure.heads]
    assert list(shape.neurons) == [len(n) for n in structure.neurons]
    assert logits(final, batches(1)[0]).shape == (8, 2)


# -- CoFi ---------------------------------------------------------------------------------------
def test_cofi_gated_model_equals_compacted(toy_spec):
    model = toy_model(4)
    batch = batches(1)[0]
    g = torch.Generator().manual_seed(5)
    gates = CoFiGates(head=(torch.rand(LAYERS, HEADS, generator=g) > 0.4).float(),
                      mha=torch.tensor([1.0, 0.0, 0.8]),
                      intermediate=(torch.rand(LAYERS, FF, generator=g) > 0.5).float() * 0.9,
                      ffn=torch.tensor([0.7, 1.0, 0.0]),
                      hidden=(torch.rand(D, generator=g) > 0.2).float() * 0.95)
    hooks = apply_gates(model, toy_spec, gates, skip_empty_units=True)
    gated = logits(model, batch)
    hooks.remove()
    result = compact_with_gates(model, toy_spec, gates, hidden_fold="exact")
    assert (gated - logits(model, batch)).abs().max() <= 1e-5
    layers = toy_spec.layers(model)
    assert not toy_spec.has_attention(layers[1]) and not toy_spec.has_ffn(layers[2])
    assert len(result.structure.hidden) == int((gates.hidden != 0).sum())


def test_cofi_runs_both_stages_on_the_renamed_model(toy_spec):
    teacher = copy.deepcopy(train(toy_model(6), [], epochs=2).unwrapped_model).eval().requires_grad_(False)
    model = toy_model(6)
    cfg = TrainConfig(method="cofi", sparsity=0.5, lr=5e-3, cofi_ft_lr=5e-3, cofi_pruning_epochs=4,
                      cofi_ft_epochs=1, cofi_prepruning_steps=4, lagrangian_warmup_epochs=1,
                      reg_lr=0.1, seed=3)
    method = get_method("cofi")
    method._teacher = teacher
    model = method.prepare(model, toy_spec, cfg)
    assert L0Gates.for_shape(toy_spec.shape(model)).n_heads == HEADS
    trainer = train(model, method.callbacks(model, toy_spec, cfg), epochs=5)
    final = method.finalize(trainer.unwrapped_model, toy_spec, cfg)
    compaction = method.describe(final, cfg)["compaction"]
    assert compaction["kept_heads"] == [len(h) for h in recorded_structure(final).heads]
    assert non_embedding_parameters(final) < non_embedding_parameters(toy_model())
    assert logits(final, batches(1)[0]).shape == (8, 2)


# -- Mask Tuning --------------------------------------------------------------------------------
def test_mask_tuning_prunes_and_materialises_the_renamed_model(toy_spec):
    model = train(toy_model(7), [], epochs=2).unwrapped_model.eval()
    calibration = batches(4, seed=11)
    result = run_mask_tuning(model, toy_spec, calibration, MaskTuningConfig(kept=0.5), log=lambda _: None)
    batch = batches(1, seed=12)[0]
    with unit_masks(model, toy_spec, list(result.head), list(result.neuron)):
        masked = logits(model, batch)
    dense = non_embedding_parameters(model)
    structure = materialize(model, toy_spec, result.head, result.neuron)
    assert (masked - logits(model, batch)).abs().max() <= 1e-5
    assert structure.empty_sublayer == "bias_ln"
    assert [len(h) for h in structure.heads] == [int(h.ne(0).sum()) for h in result.head]
    assert non_embedding_parameters(model) <= 0.5 * dense
