"""Adaptive tuning (docs/method.md#rank-growth) and self-distillation
(docs/method.md#self-distillation): rank growth that leaves outputs unchanged, the rank plan, δ,
adapter importance, L_pred, L_layer, layer sampling and mapping, Tr, and a teacher that ignores
the student's masks and later weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from aptune.apt.masks import Masks, apply_masks
from aptune.apt.ranks import AdapterImportance, AdapterSite, live_outputs, plan_rank_growth, tuning_count
from aptune.apt.salience import SalienceCollector
from aptune.apt.schedule import ScheduleSettings, build_schedule
from aptune.apt.teacher import TeacherSnapshot, layer_loss, map_layers, sample_teacher_layers
from aptune.arch import get_spec
from aptune.lora import LoRALinear, inject_lora, lora_modules
from aptune.losses import lora_layer_transform as make_layer_transform
from aptune.losses import prediction_loss
from aptune.models import load_classifier
from tests.helpers import randomize_biases_and_norms

torch.set_num_threads(1)


# -- rank growth ---------------------------------------------------------------------------------
def test_grow_rank_keeps_output_and_old_weights():
    torch.manual_seed(0)
    layer = LoRALinear(16, 12, r=8, lora_alpha=16)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5)
        layer.bias.normal_()
    x = torch.randn(5, 7, 16)
    before = layer(x).detach()
    old_a, old_b = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    returned = layer.grow_rank(13, generator=torch.Generator().manual_seed(1))
    after = layer(x).detach()
    # New B columns are zero, so only fp32 summation order differs (the inner dimension grew):
    # a few ulps of outputs near 5, depending on the CPU's BLAS kernels.
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-5)
    assert layer.r == 13
    assert layer.scaling == 2.0  # s stays at α / r_0
    assert layer.lora_A.shape == (13, 16) and layer.lora_B.shape == (12, 13)
    assert torch.equal(layer.lora_A[:8], old_a)
    assert torch.equal(layer.lora_B[:, :8], old_b)
    assert torch.equal(layer.lora_B[:, 8:], torch.zeros(12, 5))
    assert layer.lora_A[8:].abs().sum() > 0  # new rows are random, not zero
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert not layer.weight.requires_grad
    assert torch.equal(returned[0], old_a) and torch.equal(returned[1], old_b)


def test_grow_rank_to_same_or_lower_is_a_no_op():
    layer = LoRALinear(6, 4, r=8, lora_alpha=16)
    a, b = layer.lora_A, layer.lora_B
    layer.grow_rank(8)
    layer.grow_rank(5)
    assert layer.r == 8 and layer.lora_A is a and layer.lora_B is b


@pytest.mark.parametrize("init", ["gaussian", "kaiming_uniform"])
def test_new_rows_have_lora_init_variance(init):
    d_in = 3000
    layer = LoRALinear(d_in, 4, r=8, lora_alpha=16)
    layer.grow_rank(40, init=init, generator=torch.Generator().manual_seed(2))
    rows = layer.lora_A[8:].detach()  # 32 x 3000 samples
    sigma = (1 / (3 * d_in)) ** 0.5
    assert float(rows.std()) == pytest.approx(sigma, rel=0.03)
    assert abs(float(rows.mean())) < 0.05 * sigma
    if init == "gaussian":
        # a Gaussian has tails beyond the uniform bound 1/√d_in = √3·σ
        assert float(rows.abs().max()) > 1 / d_in ** 0.5
        k = ((rows - rows.mean()) / rows.std()).pow(4).mean() - 3
        assert abs(float(k)) < 0.1
    else:
        assert float(rows.abs().max()) <= 1 / d_in ** 0.5


@pytest.fixture(scope="module")
def adapter_model(tiny_bert_dir):
    return tiny_bert_dir


def _adapted(folder, seed=0):
    model = randomize_biases_and_norms(load_classifier(str(folder), 2), seed=seed)
    spec = get_spec(model)
    inject_lora(model, 8, 16, spec.apt_target_modules, trainable_modules=spec.head_modules)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)
    return model.eval(), spec


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[3, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 0, 1])}


def _logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_growing_every_adapter_leaves_logits_unchanged(tiny_model_dir):
    model, spec = _adapted(tiny_model_dir)
    x = _batch(model)
    before = _logits(model, x)
    adapters = lora_modules(model)
    assert len(adapters) == 3 * model.config.num_hidden_layers  # q, v and FFN-up in every layer
    g = torch.Generator().manual_seed(3)
    for i, (_, m) in enumerate(adapters):
        m.grow_rank(8 + 5 + i, generator=g)
    after = _logits(model, x)
    assert (after - before).abs().max() <= 1e-6
    assert [m.r for _, m in adapters] == [13 + i for i in range(len(adapters))]


# -- the rank plan --------------------------------------------------------------------------
def sites(ranks: dict[str, int], kinds: dict[str, str] | None = None) -> list[AdapterSite]:
    out = []
    for i, (name, r) in enumerate(ranks.items()):
        out.append(AdapterSite(name, LoRALinear(4, 4, r, 16), i, (kinds or {}).get(name, "head")))
    return out


R8 = {"a": 8, "b": 8, "c": 8, "d": 8}
IMP = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
LIVE10 = {"a": 10, "b": 10, "c": 10, "d": 10}

PLAN_CASES = [
    # id, ranks, importance, budget_prev, budget_now, delta_now, live_out, selection, rule, expected
    ("paper-tophalf", R8, IMP, 100, 125, 0, LIVE10, "tophalf", "paper", {"a": 10, "b": 10}),
    ("paper-tophalf-by-importance", R8, {"a": 1, "b": 2, "c": 3, "d": 4}, 100, 125, 0, LIVE10,
     "tophalf", "paper", {"d": 10, "c": 10}),
    ("paper-floor", {"a": 13, "b": 8}, {"a": 2, "b": 1}, 663_552, 862_455, 0, {"a": 10, "b": 10},
     "tophalf", "paper", {"a": 16}),  # floor(13 · 1.2998) = 16
    ("paper-cap", {"a": 60, "b": 8, "c": 8, "d": 8}, IMP, 100, 125, 0, LIVE10, "tophalf", "paper",
     {"a": 64, "b": 10}),
    ("paper-skip-at-max", {"a": 64, "b": 8, "c": 8, "d": 8}, IMP, 100, 125, 0, LIVE10, "tophalf",
     "paper", {"b": 10, "c": 10}),  # N_a = 4 counts a; the first 2 growable follow it
    ("paper-deleted-adapter", R8, IMP, 100, 125, 0, {"a": 10, "b": 10, "c": 10, "d": 0}, "tophalf",
     "paper", {"a": 10}),  # d has no live outputs: N_a = 3, ⌊3/2⌋ = 1
    ("paper-no-gain", R8, IMP, 100, 110, 0, LIVE10, "tophalf", "paper", {}),  # ⌊8.8⌋ = 8
    ("paper-all", R8, IMP, 100, 125, 0, LIVE10, "all", "paper", {"a": 10, "b": 10, "c": 10, "d": 10}),
    ("paper-all-skip-max", {"a": 64, "b": 8, "c": 8, "d": 8}, IMP, 100, 150, 0, LIVE10, "all",
     "paper", {"b": 12, "c": 12, "d": 12}),
    # budget_fill: live_in 10, live_out 10, r 8 -> 160 per adapter, δ = 640.
    # tophalf: rate = (960 - 640) / (2·160) + 1 = 2
    ("fill-tophalf", R8, IMP, 640, 960, 640, LIVE10, "tophalf", "budget_fill", {"a": 16, "b": 16}),
    # all: r' = ⌊r · Δ_k / δ⌋ = ⌊8 · 1.5⌋
    ("fill-all", R8, IMP, 640, 960, 640, LIVE10, "all", "budget_fill",
     {"a": 12, "b": 12, "c": 12, "d": 12}),
    ("fill-tophalf-uneven", {"a": 8, "b": 4, "c": 8, "d": 8}, IMP, 0.5, 1000, 560,
     LIVE10, "tophalf", "budget_fill", {"a": 22, "b": 11}),  # rate = 440/240 + 1 = 2.8333
    ("no-previous-budget", R8, IMP, 0, 125, 0, LIVE10, "tophalf", "paper", {}),
]


@pytest.mark.parametrize("ranks, importance, prev, now, delta, live_out, selection, rule, expected",
                         [c[1:] for c in PLAN_CASES], ids=[c[0] for c in PLAN_CASES])
def test_plan_rank_growth(ranks, importance, prev, now, delta, live_out, selection, rule, expected):
    plan = plan_rank_growth(sites(ranks), importance, prev, now, delta, 10, live_out,
                            selection=selection, rule=rule, max_rank=64)
    assert plan == expected


def test_plan_does_not_change_ranks():
    s = sites(R8)
    plan_rank_growth(s, IMP, 100, 200, 0, 10, LIVE10)
    assert [x.module.r for x in s] == [8, 8, 8, 8]


def test_plan_rejects_unknown_rule():
    with pytest.raises(ValueError):
        plan_rank_growth(sites(R8), IMP, 100, 200, 0, 10, LIVE10, rule="nope")


def test_sst2_rank_progression_under_paper_rule():
    """An adapter selected at every point grows 8 → 10 → … → 28 under the SST2 ratios."""
    sched = build_schedule(ScheduleSettings(total_steps=84_200, steps_per_epoch=2105, target_kept=0.4,
                                            mode="absolute"))
    sched.set_tuning_budget(663_552, 4.0)
    s = sites({"a": 8, "b": 8})
    budgets = [663_552, *sched.budgets]
    ranks = []
    for prev, now in zip(budgets[:-1], budgets[1:]):
        plan = plan_rank_growth(s, {"a": 1.0, "b": 0.0}, prev, now, 0, 10, {"a": 10, "b": 10})
        assert set(plan) == {"a"}
        s[0].module.grow_rank(plan["a"])
        ranks.append(s[0].module.r)
    assert ranks == [10, 12, 14, 16, 18, 20, 22, 24, 26, 28]
    assert s[1].module.r == 8


# -- δ --------------------------------------------------------------------------------------------
def test_tuning_count_hand_case():
    s = [AdapterSite("q", SimpleNamespace(r=8), 0, "head"),
         AdapterSite("v", SimpleNamespace(r=4), 0, "head"),
         AdapterSite("up", SimpleNamespace(r=5), 0, "neuron")]
    # (10 + 6)·8 + (10 + 3)·5; v has no live outputs and does not count
    assert tuning_count(s, 10, {"q": 6, "v": 0, "up": 3}) == 128 + 65


def test_tuning_count_roberta_base_delta0():
    s = []
    for layer in range(12):
        s += [AdapterSite(f"{layer}.q", SimpleNamespace(r=8), layer, "head"),
              AdapterSite(f"{layer}.v", SimpleNamespace(r=8), layer, "head"),
              AdapterSite(f"{layer}.up", SimpleNamespace(r=8), layer, "neuron")]
    live = {x.name: (3072 if x.output_kind == "neuron" else 768) for x in s}
    assert tuning_count(s, 768, live) == 663_552


def test_live_outputs_hand_case():
    s = [AdapterSite("q0", SimpleNamespace(r=8), 0, "head"),
         AdapterSite("up0", SimpleNamespace(r=8), 0, "neuron"),
         AdapterSite("v1", SimpleNamespace(r=8), 1, "head"),
         AdapterSite("up1", SimpleNamespace(r=8), 1, "neuron")]
    heads = [torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.0, 0.0, 0.0])]
    neurons = [torch.tensor([0.0, 1.0, 1.0, 0.0, 0.2]), torch.ones(5)]
    assert live_outputs(s, heads, neurons, head_dim=4) == {"q0": 8, "up0": 3, "v1": 0, "up1": 5}


# -- adapter importance ---------------------------------------------------------------------
def test_adapter_importance_ema_and_reset():
    layer = LoRALinear(3, 2, r=2, lora_alpha=4)
    with torch.no_grad():
        layer.lora_B.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
    site = [AdapterSite("x", layer, 0, "head")]
    imp = AdapterImportance(beta=0.85)
    layer.lora_B.grad = torch.tensor([[0.5, 0.5], [-1.0, 2.0]])  # Σ|B ⊙ ∇B| = 0.5 + 1 + 3 + 0
    imp.update(site)
    assert imp.scores["x"] == pytest.approx(0.15 * 4.5)
    layer.lora_B.grad = torch.tensor([[2.0, 0.0], [0.0, 7.0]])  # = 2
    imp.update(site)
    assert imp.scores["x"] == pytest.approx(0.85 * 0.15 * 4.5 + 0.15 * 2.0)
    layer.lora_B.grad = None  # no gradient: importance decays
    imp.update(site)
    assert imp.scores["x"] == pytest.approx(0.85 * (0.85 * 0.15 * 4.5 + 0.15 * 2.0))
    imp.reset()
    assert imp.scores == {}
    layer.lora_B.grad = torch.tensor([[2.0, 0.0], [0.0, 7.0]])
    imp.update(site)
    assert imp.scores["x"] == pytest.approx(0.15 * 2.0)  # restarted from 0


def test_adapter_importance_ignores_lora_a():
    layer = LoRALinear(3, 2, r=2, lora_alpha=4)
    with torch.no_grad():
        layer.lora_B.fill_(1.0)
    layer.lora_B.grad = torch.ones(2, 2)
    layer.lora_A.grad = torch.full((2, 3), 100.0)
    imp = AdapterImportance()
    imp.update([AdapterSite("x", layer, 0, "head")])
    assert imp.scores["x"] == pytest.approx(0.15 * 4.0)


# -- L_pred ----------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [4.0, 1.0, 2 / 3])
def test_prediction_loss_is_tau_squared_kl(tau):
    g = torch.Generator().manual_seed(4)
    t, s = torch.randn(6, 3, generator=g) * 3, torch.randn(6, 3, generator=g) * 3
    expected = tau ** 2 * F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1),
                                   reduction="batchmean", log_target=True)
    got = prediction_loss(t, s, tau)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(got) > 0
    # by hand for one row
    p = torch.softmax(t[0] / tau, -1)
    row = tau ** 2 * float((p * (torch.log(p) - torch.log_softmax(s[0] / tau, -1))).sum())
    assert float(prediction_loss(t[:1], s[:1], tau)) == pytest.approx(row, rel=1e-5)


def test_prediction_loss_zero_for_identical_logits_and_grad_to_student_only():
    t = torch.randn(5, 4, generator=torch.Generator().manual_seed(5))
    assert abs(float(prediction_loss(t, t.clone(), 4.0))) < 1e-6
    s = t.clone().requires_grad_(True)
    shifted = s + torch.tensor([0.0, 1.0, 0.0, 0.0])
    prediction_loss(t, shifted, 4.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_prediction_loss_default_temperature_is_not_one():
    """τ matters: the same logits give different losses at τ = 4 and τ = 1."""
    g = torch.Generator().manual_seed(6)
    t, s = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    assert float(prediction_loss(t, s, 4.0)) != pytest.approx(float(prediction_loss(t, s, 1.0)))


# -- teacher layers and the mapping φ --------------------------------------------------------
def test_sample_teacher_layers_12():
    groups = [{0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {9, 10, 11}]
    g = torch.Generator().manual_seed(7)
    seen = set()
    for _ in range(200):
        picks = sample_teacher_layers(12, g)
        assert len(picks) == 4
        for pick, group in zip(picks, groups):
            assert pick in group
        seen.update(picks)
    assert seen == set(range(12))  # every layer of every block gets drawn


def test_sample_teacher_layers_6():
    g = torch.Generator().manual_seed(8)
    draws = [sample_teacher_layers(6, g) for _ in range(300)]
    assert all(len(d) == 4 and d == sorted(d) and len(set(d)) == 4 for d in draws)
    blocks = [sorted({d[k] for d in draws}) for k in range(4)]
    # the 4 blocks are contiguous, cover 0..5 exactly once, and are nearly equal (1 or 2 layers)
    assert [x for b in blocks for x in b] == list(range(6))
    assert all(b == list(range(b[0], b[-1] + 1)) and len(b) in (1, 2) for b in blocks)


def test_sample_teacher_layers_is_seeded():
    a = [sample_teacher_layers(12, torch.Generator().manual_seed(9)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def _hidden(n, seed, shape=(2, 5, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def test_map_layers_finds_the_matching_student_layer():
    teacher = _hidden(4, 10)
    perm = [2, 0, 3, 1]  # student j looks like teacher perm[j]
    noise = _hidden(4, 11)
    student = [teacher[perm[j]] + 1e-3 * noise[j] for j in range(4)]
    tr = make_layer_transform(8)
    phi = map_layers(teacher, student, [0, 1, 2, 3], [True] * 4, tr)
    assert phi == {perm[j]: j for j in range(4)}
    # not-alive layers are never chosen
    alive = [True, False, True, True]
    phi = map_layers(teacher, student, [0, 1, 2, 3], alive, tr)
    assert 1 not in phi.values()
    assert phi[2] == 0 and phi[3] == 2 and phi[1] == 3
    assert map_layers(teacher, student, [0, 1], [False] * 4, tr) == {}


def test_map_layers_ties_go_to_the_nearest_index():
    teacher = _hidden(6, 12)
    same = _hidden(1, 13)[0]
    student = [same.clone() for _ in range(6)]  # every student layer is equally close
    alive = [True, False, False, True, False, True]
    phi = map_layers(teacher, student, [0, 1, 2, 3, 5], alive, make_layer_transform(8))
    assert phi == {0: 0, 1: 0, 2: 3, 3: 3, 5: 5}


def test_map_layers_uses_the_transform():
    teacher = _hidden(2, 14)
    # Student 0 is teacher 1 scaled by 2, student 1 is teacher 1 shifted by 0.5. Through the
    # identity student 1 is closer (MSE 0.25 vs ≈ 1); through a transform that halves, student 0
    # maps back exactly.
    student = [2 * teacher[1], teacher[1] + 0.5]
    tr = make_layer_transform(8)
    assert map_layers(teacher, student, [1], [True, True], tr) == {1: 1}
    with torch.no_grad():  # W stays the frozen identity; the adapter makes Tr halve: I + 2 · (-0.25 I)
        tr.lora_A.copy_(torch.eye(8))
        tr.lora_B.copy_(-0.25 * torch.eye(8))
    assert map_layers(teacher, student, [1], [True, True], tr) == {1: 0}


def test_layer_loss_is_a_sum_of_mses():
    teacher, student = _hidden(3, 15), _hidden(3, 16)
    tr = make_layer_transform(8)
    expected = F.mse_loss(student[1], teacher[0]) + F.mse_loss(student[2], teacher[2])
    got = layer_loss(teacher, student, {0: 1, 2: 2}, tr)
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert float(layer_loss(teacher, student, {}, tr)) == 0.0


def test_layer_transform_starts_as_identity():
    tr = make_layer_transform(8, r=8, lora_alpha=16)
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(17))
    assert torch.allclose(tr(x), x, atol=1e-7)
    assert torch.equal(tr.weight, torch.eye(8)) and torch.equal(tr.bias, torch.zeros(8))
    assert not tr.weight.requires_grad and not tr.bias.requires_grad
    assert tr.lora_A.requires_grad and tr.lora_B.requires_grad
    assert torch.equal(tr.lora_B, torch.zeros(8, 8)) and tr.lora_A.abs().sum() > 0
    assert tr.r == 8 and tr.scaling == 2.0


# -- the teacher snapshot -------------------------------------------------------------------------
@pytest.fixture
def student(tiny_model_dir):
    model, spec = _adapted(tiny_model_dir, seed=2)
    masks = apply_masks(model, spec, Masks.ones_like(model, spec))
    collector = SalienceCollector(model, spec, use_kurtosis=True)
    return model, spec, masks, collector


def _teacher_logits(snapshot, model, batch, masks, collector):
    return snapshot.forward(model, batch, masks, collector).logits


def test_teacher_ignores_student_masks(student):
    model, spec, masks, collector = student
    x = _batch(model, 1)
    model.train()
    snapshot = TeacherSnapshot(model)
    before = _teacher_logits(snapshot, model, x, masks, collector)
    assert model.training  # the teacher forward restores the mode
    g = torch.Generator().manual_seed(18)
    for m in masks.all():
        m.copy_(torch.rand(m.shape, generator=g))  # soft masks, as inside a decay window
    masks.head[0].zero_()  # and one fully pruned attention sub-layer
    after = _teacher_logits(snapshot, model, x, masks, collector)
    assert torch.equal(after, before)
    assert masks.enabled
    model.eval()
    student_masked = _logits(model, x)
    with masks.disabled():
        student_dense = _logits(model, x)
    assert (student_masked - student_dense).abs().max() > 1e-3  # the masks do act on the student
    assert torch.allclose(student_dense, before, atol=1e-6)  # teacher = unmasked snapshot state


def test_teacher_ignores_later_student_weights(student):
    model, spec, masks, collector = student
    x = _batch(model, 2)
    snapshot = TeacherSnapshot(model)
    before = _teacher_logits(snapshot, model, x, masks, collector)
    student_before = _logits(model, x)
    g = torch.Generator().manual_seed(19)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.add_(torch.randn(m.lora_B.shape, generator=g))
            m.lora_A.add_(torch.randn(m.lora_A.shape, generator=g))
        for name, p in model.named_parameters():
            if p.requires_grad and "classifier" in name:
                p.add_(torch.randn(p.shape, generator=g))
    assert (_logits(model, x) - student_before).abs().max() > 1e-3
    assert torch.equal(_teacher_logits(snapshot, model, x, masks, collector), before)
    # ranks that grow after the snapshot do not reach the teacher either
    for _, m in lora_modules(model):
        m.grow_rank(m.r + 3, generator=g)
    assert torch.equal(_teacher_logits(snapshot, model, x, masks, collector), before)
    # only trainable tensors are copied: the frozen backbone is shared
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert 0 < snapshot.numel() < frozen


def test_teacher_leaves_salience_untouched(student):
    model, spec, masks, collector = student
    model.train()
    collector.active = True
    out = model(**_batch(model, 3))  # a student forward fills the taps
    taps = [t for t in collector.head_taps + collector.neuron_taps + collector.hidden_taps if t is not None]
    saved = [(t.act.clone(), t.mean_sum.clone(), t.rows) for t in taps]
    snapshot = TeacherSnapshot(model)
    teacher = snapshot.forward(model, _batch(model, 4), masks, collector)
    assert collector.active  # restored after the teacher forward
    assert teacher.hidden_states is not None and not teacher.logits.requires_grad
    for t, (act, mean_sum, rows) in zip(taps, saved):
        assert torch.equal(t.act, act) and torch.equal(t.mean_sum, mean_sum) and t.rows == rows
    # the gradient of the student step still lands only in the student's taps
    out.loss.backward()
    assert all(t.grad is not None for t in taps)


@pytest.mark.parametrize("value, snapshots", [(0.70, False), (0.71, True)])
def test_the_teacher_gate_waits_for_a_teacher_better_than_a_constant_answer(tiny_bert_dir, value, snapshots):
    """On 10 dev rows, 6 of one label: a constant answer scores 0.6, and one dev row more is 0.7.
    A teacher at 0.7 is not taken (the run goes on without one); at 0.71 it is. Off (--no-teacher-gate),
    there is no floor: the paper distils from the first snapshot, whatever it scores."""
    from aptune import APTConfig
    from aptune.apt.callback import attach_apt
    from aptune.tasks import Example, get_task

    model = load_classifier(str(tiny_bert_dir), 2)
    callback = attach_apt(model, get_spec(model), APTConfig(sparsity=0.6, teacher_gate=True))
    said = []
    dev = SimpleNamespace(examples=[Example(("a",), 0)] * 6 + [Example(("b",), 1)] * 4)
    trainer = SimpleNamespace(step=5, evaluate_untimed=lambda: {"accuracy": value}, task=get_task("sst2"),
                              eval_loader=SimpleNamespace(dataset=dev), say=said.append,
                              unwrapped_model=model)
    # what a snapshot does beyond the gate (compaction, a new optimizer) is tested elsewhere
    callback._compact = lambda model, survivors: {}
    callback._transform_follows_student = lambda survivors: survivors
    callback._rebuild_optimizer = lambda trainer, survivors: None
    callback._maybe_refresh_teacher(trainer)
    assert (callback.distillation.teacher is not None) == snapshots
    assert ("no teacher snapshot" in said[0]) != snapshots and f"{value:.4f}" in said[0]
    assert snapshots or "a constant answer's (0.6000 and one dev row)" in said[0]
    assert callback.distillation.log == [{"step": 5, "value": value,
                                          "decision": "snapshot" if snapshots else "gated"}]
    if snapshots:  # the next window start at the same score keeps that teacher
        callback._maybe_refresh_teacher(trainer)
        assert callback.distillation.log[-1]["decision"] == "kept"
    assert APTConfig().teacher_gate  # the default
    callback.cfg.teacher_gate = False
    assert callback._constant_floor(trainer) is None
