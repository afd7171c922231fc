"""CoFi's library pieces (docs/baselines.md#cofi): gates, size model, Lagrangian, distillation,
config."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from aptune.cofi.config import CoFiConfig
from aptune.cofi.distill import (CoFiDistillLoss, existing_layers, layer_distill_loss, make_layer_transform,
                                 match_layers, teacher_layers_v4)
from aptune.cofi.expected_size import (SizeModel, deterministic_size, deterministic_sparsity, expected_size,
                                       expected_sparsity)
from aptune.cofi.gates import CoFiGates, L0Gates
from aptune.cofi.lagrangian import LagrangianControl, build_l0_optimizers, target_sparsity_at
from aptune.cofi.gates import (LOG_ALPHA_MAX, deterministic_group, deterministic_layer_gate,
                               keep_probability, sample_hard_concrete, soft_value)
from aptune.errors import AptuneError

pytestmark = pytest.mark.usefixtures("one_thread")


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# -- hard-concrete gates ------------------------------------------------------------------------
@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.0, 3.0])
def test_sample_range_and_empirical_keep_probability(log_alpha):
    g = torch.Generator().manual_seed(0)
    la = torch.full((50_000,), log_alpha)
    z = sample_hard_concrete(la, g)
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    assert bool((z == 0).any()) and bool((z == 1).any())  # both point masses of the stretched law
    empirical = float((z != 0).float().mean())
    assert empirical == pytest.approx(float(keep_probability(torch.tensor(log_alpha))), abs=0.01)


def test_keep_probability_formula():
    # P(z≠0) = sigmoid(log α − β log(−γ/ζ)) = sigmoid(log α + 1.5986); 0.83 at log α = 0
    assert float(keep_probability(torch.tensor(0.0))) == pytest.approx(0.8318, abs=1e-4)
    for la in (-3.0, 1.0, 4.0):
        assert float(keep_probability(torch.tensor(la))) == pytest.approx(_sigmoid(la + 1.5986), abs=1e-4)
    assert float(keep_probability(torch.tensor(40.0))) == pytest.approx(1 - 1e-6)  # Q clamped


def test_init_sampling_shapes_and_clamp():
    gates = L0Gates(3, 4, 32, 48, generator=torch.Generator().manual_seed(0))
    la = gates.log_alpha
    for name in ("head", "mha", "ffn", "hidden"):
        assert float(la[name].detach().mean()) == pytest.approx(10.0, abs=0.02)
    assert float(la["intermediate"].detach().mean()) == pytest.approx(0.0, abs=0.01)  # droprate_init 0.5
    assert float(la["intermediate"].detach().std()) == pytest.approx(0.01, rel=0.3)
    sample = gates.sample(torch.Generator().manual_seed(1))  # one draw for the whole batch
    assert sample.head.shape == (3, 4) and sample.mha.shape == (3,)
    assert sample.intermediate.shape == (3, 48) and sample.ffn.shape == (3,) and sample.hidden.shape == (32,)
    assert sample.intermediate.requires_grad
    gates.clamp_()
    assert LOG_ALPHA_MAX == pytest.approx(math.log(100))
    assert float(la["head"].detach().max()) == pytest.approx(LOG_ALPHA_MAX)  # 10 -> 4.605


def test_disabled_groups_are_constant_ones():
    gates = L0Gates(2, 4, 32, 48, groups=("head", "intermediate"))
    for g in (gates.sample(), gates.deterministic(), gates.keep_probability()):
        assert bool((g.mha == 1).all()) and bool((g.ffn == 1).all()) and bool((g.hidden == 1).all())
    assert set(dict(gates.named_parameters())) == {"log_alpha.head", "log_alpha.intermediate"}


# -- deterministic gates ------------------------------------------------------------------------
def test_deterministic_gates_hand_case():
    la = torch.tensor([[3.0, -1.0, 0.5, -3.0]])  # one layer's heads
    # P = sigmoid(la + 1.5986) = [.990, .645, .891, .198]: Σ = 2.724, round(4 − 2.724) = 1 zero
    z = deterministic_group(la)
    soft = [_sigmoid(0.8 * v / (2 / 3)) for v in (3.0, -1.0, 0.5)]
    assert z[0].tolist() == pytest.approx(soft + [0.0], abs=1e-6)  # kept gates stay fractional
    la2 = torch.tensor([[-4.0, -4.0, -4.0, 4.0]])  # Σ P = 1.245 -> round(2.755) = 3 zeros
    assert (deterministic_group(la2)[0] != 0).tolist() == [False, False, False, True]
    hidden = torch.tensor([4.0, 4.0, -4.0, 0.0, 4.0])  # a 1-D group: Σ P = 3.904 -> 1 zero
    assert (deterministic_group(hidden) != 0).tolist() == [True, True, False, True, True]


def test_deterministic_layer_gates_use_the_half_rule():
    la = torch.tensor([-2.0, -1.0, 2.0])  # P = [.40, .65, .97]
    z = deterministic_layer_gate(la)
    assert z.tolist() == pytest.approx([0.0, float(soft_value(torch.tensor(-1.0))), _sigmoid(2.4)], abs=1e-6)
    assert 0 < float(z[1]) < 0.5  # kept with its soft value even though it is below 0.5


def test_l0gates_deterministic_groups_per_layer():
    gates = L0Gates(2, 4, 8, 6, init_std=0.0)
    with torch.no_grad():
        gates.log_alpha["head"].copy_(torch.tensor([[3.0, -1.0, 0.5, -3.0], [4.0, 4.0, 4.0, 4.0]]))
        gates.log_alpha["mha"].copy_(torch.tensor([-2.0, 2.0]))
    z = gates.deterministic()
    assert (z.head != 0).tolist() == [[True, True, True, False], [True] * 4]
    assert z.mha[0] == 0 and z.mha[1] > 0
    assert int((z.intermediate != 0).sum(1)[0]) == 5  # log α = 0: round(6 − 6·0.832) = 1 zero
    assert not z.head.requires_grad


# -- expected size ------------------------------------------------------------------------------
def test_size_constants_of_base_models():
    base = SizeModel(12, 12, 768, 3072)
    assert base.full_size == 85_017_600
    assert base.params_per_head == 196_864 and base.params_per_neuron == 1_537


def test_expected_size_at_init_matches_a_hand_count():
    n_layers, n_heads, d, d_ff = 2, 4, 32, 48
    gates = L0Gates(n_layers, n_heads, d, d_ff, init_std=0.0)  # log α exactly 10 and 0
    shape = SizeModel.of_gates(gates)
    p10, p0 = _sigmoid(10 + 1.5986), _sigmoid(0 + 1.5986)
    per_head = (4 * d * d + 4 * d) / n_heads  # 1,056
    hand = 0.0
    for _j in range(d):  # Σ_j Σ_{l,h} … + 2 Σ_j Σ_{l,i} …, term by term
        for _l in range(n_layers):
            hand += sum(p10 * p10 * p10 * per_head / d for _h in range(n_heads))
            hand += sum(2 * p10 * p10 * p0 for _i in range(d_ff))
    full = n_layers * ((4 * d * d + 4 * d) + (2 * d * d_ff + d + 4 * d))  # 2 · (4,224 + 3,232)
    assert shape.full_size == full == 14_912
    assert expected_size(gates.keep_probability(), shape).item() == pytest.approx(hand, rel=1e-5)
    assert expected_sparsity(gates).item() == pytest.approx(1 - hand / full, rel=1e-5)


def test_expected_size_without_hidden_gates_uses_per_neuron_count():
    gates = L0Gates(2, 4, 32, 48, groups=("head", "mha", "intermediate", "ffn"), init_std=0.0)
    shape = SizeModel.of_gates(gates)
    p10, p0 = _sigmoid(11.5986), _sigmoid(1.5986)
    hand = 2 * 4 * p10 * p10 * shape.params_per_head + 2 * 48 * p10 * p0 * shape.params_per_neuron
    assert expected_sparsity(gates).item() == pytest.approx(1 - hand / shape.full_size, rel=1e-5)


def test_deterministic_size_counts_kept_units_times_kept_hidden():
    shape = SizeModel(2, 4, 32, 48)
    gates = CoFiGates(head=torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.7, 0.7, 0.7, 0.7]]),
                      mha=torch.tensor([1.0, 0.0]),  # layer 1's heads are gone with its layer gate
                      intermediate=torch.cat([torch.ones(2, 10), torch.zeros(2, 38)], 1),
                      ffn=torch.tensor([0.3, 1.0]), hidden=torch.cat([torch.ones(20), torch.zeros(12)]))
    expected = 20 * (4 * 8 * 2 + 2 * 20)
    assert deterministic_size(gates, shape) == expected
    assert deterministic_sparsity(gates, shape) == pytest.approx(1 - expected / shape.full_size)


# -- Lagrangian ---------------------------------------------------------------------------------
def test_target_warmup():
    assert target_sparsity_at(0, 0.6, 100) == 0
    assert target_sparsity_at(50, 0.6, 100) == pytest.approx(0.3)
    assert target_sparsity_at(500, 0.6, 100) == pytest.approx(0.6)
    assert target_sparsity_at(5, 0.6, 0) == pytest.approx(0.6)


def test_multipliers_ascend():
    control = LagrangianControl(0.6, 0)
    gates = L0Gates(1, 2, 4, 4)
    _, ascent = build_l0_optimizers(gates, control, reg_lr=0.01)
    loss = control(torch.tensor(0.4), 0.6)  # ŝ − t = −0.2: ascent makes λ1 negative
    loss.backward()
    ascent.step()
    assert control.lambda_1.item() == pytest.approx(-0.01, rel=1e-3)  # Adam's first step is ±lr


def test_lagrangian_drives_expected_sparsity_to_target():
    torch.manual_seed(0)
    gates = L0Gates(2, 4, 16, 32, generator=torch.Generator().manual_seed(0))
    target = 0.5
    control = LagrangianControl(target, warmup_steps=0)
    descent, ascent = build_l0_optimizers(gates, control, reg_lr=0.05)
    gaps = []
    for _ in range(600):
        sparsity = expected_sparsity(gates)
        loss = control(sparsity, control.target_at(0))
        descent.zero_grad()
        ascent.zero_grad()
        loss.backward()
        descent.step()
        ascent.step()
        gates.clamp_()
        gaps.append(abs(sparsity.item() - target))
    assert max(gaps[-50:]) < 0.02


# -- distillation -------------------------------------------------------------------------------
def test_teacher_layers_v4():
    assert teacher_layers_v4(12) == [2, 5, 8, 11]
    assert teacher_layers_v4(24) == [5, 11, 17, 23]
    assert teacher_layers_v4(6) == [0, 2, 3, 5]
    assert teacher_layers_v4(3) == [0, 1, 2]


def _scalar_hidden(values):
    return [torch.full((1, 2, 3), float(v)) for v in values]


def test_v4_mapping_hand_case():
    teacher = _scalar_hidden(range(12))  # H_t^i = i everywhere
    student = _scalar_hidden([0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 9, 0])
    identity = make_layer_transform(3, "frozen_identity")
    exists = [j in (4, 10) for j in range(12)]
    loss, mapping = layer_distill_loss(teacher, student, exists, identity, [2, 5, 8, 11])
    # 11 -> 10 (err 4); 8 would prefer 10 (err 1) but must go below 10 -> 4 (err 16);
    # 5 and 2 find nothing below 4 and reuse it (errs 1 and 4)
    assert mapping == {11: 10, 8: 4, 5: 4, 2: 4}
    assert float(loss) == pytest.approx(4 + 16 + 1 + 4)
    _, unordered = layer_distill_loss(teacher, student, exists, identity, [2, 5, 8, 11], version=3)
    assert unordered == {11: 10, 8: 10, 5: 4, 2: 4}


def test_v4_mapping_follows_each_step_and_the_existing_rule():
    errors = torch.tensor([[0.0, 5.0, 9.0], [4.0, 1.0, 0.5], [9.0, 2.0, 0.1]])  # teachers 3, 6, 9
    assert match_layers(errors, [3, 6, 9], [1, 5, 7]) == {9: 7, 6: 5, 3: 1}
    gates = CoFiGates(head=torch.ones(4, 2), mha=torch.tensor([1.0, 0.0, 0.0, 0.5]),
                      intermediate=torch.ones(4, 3), ffn=torch.tensor([0.0, 1.0, 0.0, 1.0]),
                      hidden=torch.ones(3))
    assert existing_layers(gates, 4) == [True, False, False, True]
    assert existing_layers(gates, 4, "mha_or_ffn") == [True, True, False, True]
    assert existing_layers(None, 4) == [True] * 4
    loss, mapping = layer_distill_loss(_scalar_hidden(range(4)), _scalar_hidden(range(4)), [False] * 4,
                                       make_layer_transform(3, "frozen_identity"), [0, 1, 2, 3])
    assert mapping == {} and float(loss) == 0


def test_layer_transform_starts_as_identity():
    x = torch.randn(2, 5, 8)
    for mode, trainable in (("full", True), ("frozen_identity", False), ("lora", True)):
        tr = make_layer_transform(8, mode)
        assert torch.allclose(tr(x), x, atol=1e-6)
        assert any(p.requires_grad for p in tr.parameters()) == trainable
    assert not make_layer_transform(8, "lora").weight.requires_grad


def test_distill_loss_combines_prediction_and_layer_terms():
    g = torch.Generator().manual_seed(0)
    hidden = lambda: tuple(torch.randn(2, 4, 8, generator=g) for _ in range(13))  # embeddings + 12
    teacher = SimpleNamespace(logits=torch.randn(2, 3, generator=g), hidden_states=hidden())
    student = SimpleNamespace(logits=torch.randn(2, 3, generator=g, requires_grad=True),
                              hidden_states=hidden())
    loss_fn = CoFiDistillLoss(12, 8)
    out = loss_fn(teacher, student)
    t, s = teacher.logits / 2, student.logits / 2
    kl = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1).mean() * 4  # T² · KL
    assert out.pred.item() == pytest.approx(kl.item(), rel=1e-5)
    assert out.total.item() == pytest.approx(0.9 * out.layer.item() + 0.1 * out.pred.item(), rel=1e-6)
    assert sorted(out.mapping) == [2, 5, 8, 11]
    out.total.backward()
    assert student.logits.grad is not None and loss_fn.transform.weight.grad is not None
    same = loss_fn(teacher, SimpleNamespace(logits=teacher.logits, hidden_states=teacher.hidden_states))
    assert same.total.item() == pytest.approx(0.0, abs=1e-6)


# -- config -------------------------------------------------------------------------------------
def test_config_defaults_validate():
    cfg = CoFiConfig()
    cfg.validate()
    assert (cfg.reg_lr, cfg.cofi_prepruning_steps, cfg.cofi_distill_temperature) == (0.01, 100, 2.0)
    assert cfg.cofi_layer_distill_version == 4 and cfg.cofi_existing_layers == "mha_only"
    assert cfg.sparsity_epsilon == 0.0 and cfg.cofi_lora_tr == "frozen_identity"


@pytest.mark.parametrize("change", [{"cofi_existing_layers": "any"}, {"cofi_layer_distill_version": 1},
                                    {"cofi_lora_tr": "none"}, {"cofi_lora_head": "x"}, {"reg_lr": 0.0},
                                    {"cofi_prepruning": "2epochs"}, {"cofi_prepruning_steps": -1},
                                    {"sparsity_epsilon": 1.0}, {"lagrangian_warmup_epochs": 30.0},
                                    {"cofi_alpha_pred": -0.1}])
def test_config_rejects_bad_values(change):
    with pytest.raises(AptuneError) as err:
        CoFiConfig(**change).validate()
    assert err.value.fix
