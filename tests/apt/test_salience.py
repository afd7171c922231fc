"""Outlier-aware activation x gradient salience (docs/method.md#salience): the kurtosis term, block
scores against an independent computation on a tiny BERT, the EMA, and when nothing is collected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aptune.arch import get_spec
from aptune.apt.masks import Masks, apply_masks
from aptune.models import load_classifier
from aptune.apt.salience import SalienceCollector, excess_kurtosis

from tests.helpers import build_tiny_model, randomize_biases_and_norms

torch.set_num_threads(1)

HIDDEN, HEADS, FFN = 8, 2, 4
HEAD_DIM = HIDDEN // HEADS


# -- excess kurtosis -------------------------------------------------------------------------
def numpy_kurtosis(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    std = v.std(ddof=1)
    z = np.zeros_like(v) if std == 0 else (v - v.mean()) / std
    return float((z ** 4).mean() - 3.0)


def test_kurtosis_of_gaussian_is_near_zero():
    v = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    assert abs(float(excess_kurtosis(v))) < 0.1


def test_kurtosis_with_one_outlier_is_large():
    v = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 0.01
    v[17] = 100.0
    k = float(excess_kurtosis(v))
    assert k > 50
    assert k == pytest.approx(numpy_kurtosis(v.numpy()), rel=1e-4)


@pytest.mark.parametrize("value, dtype", [(0.0, torch.float32), (5.0, torch.float32),
                                          (-2.0, torch.float64), (3.7, torch.float64)])
def test_kurtosis_of_constant_vector(value, dtype):
    k = excess_kurtosis(torch.full((32,), value, dtype=dtype))
    assert float(k) == -3.0  # z = 0 where std = 0
    assert float(k.clamp_min(0).sqrt()) == 0.0
    assert not torch.isnan(k)


@pytest.mark.parametrize("value, n", [(3.7, 32), (0.1, 7)])
def test_kurtosis_of_inexact_float32_constant(value, n):
    k = excess_kurtosis(torch.full((n,), value))
    assert float(k) == -3.0


@pytest.mark.parametrize("values", [[1, 2, 3, 4, 10], [0.5, -1.0, 2.0, 2.0, 7.5, -3.0],
                                    [1e-3, 2e-3, 5e-3, 1e-3], [2, 2, 2, 9]])
def test_kurtosis_hand_cases(values):
    k = float(excess_kurtosis(torch.tensor(values, dtype=torch.float64)))
    assert k == pytest.approx(numpy_kurtosis(values), rel=1e-9, abs=1e-12)


def test_kurtosis_of_1_2_3_4_10_by_hand():
    # mean 4, unbiased var 50/4 = 12.5, Σ(x-μ)⁴ = 81+16+1+0+1296 = 1394
    expected = 1394 / 12.5 ** 2 / 5 - 3
    assert float(excess_kurtosis(torch.tensor([1.0, 2, 3, 4, 10], dtype=torch.float64))) == \
        pytest.approx(expected, rel=1e-12)


def test_kurtosis_along_a_dimension():
    g = torch.Generator().manual_seed(2)
    m = torch.randn(5, 7, generator=g, dtype=torch.float64)
    m[3] = 1.0  # a constant row
    rows = excess_kurtosis(m, dim=1)
    cols = excess_kurtosis(m, dim=0)
    assert rows.shape == (5,) and cols.shape == (7,)
    assert rows.tolist() == pytest.approx([numpy_kurtosis(r) for r in m.numpy()])
    assert cols.tolist() == pytest.approx([numpy_kurtosis(c) for c in m.numpy().T])
    assert float(rows[3]) == -3.0


def test_weighted_kurtosis_is_the_kurtosis_of_the_kept_entries():
    g = torch.Generator().manual_seed(6)
    m = torch.randn(4, 9, generator=g, dtype=torch.float64)
    keep = torch.rand(4, 9, generator=g) > 0.4
    keep[2] = False
    keep[2, 5] = True  # a row with one kept entry: no spread, so z = 0 as for a constant
    got = excess_kurtosis(m, dim=1, weight=keep.double())
    for i in range(4):
        kept = m[i][keep[i]].numpy()
        expected = -3.0 if kept.size < 2 else numpy_kurtosis(kept)
        assert float(got[i]) == pytest.approx(expected)
    # all ones is the plain kurtosis
    ones = torch.ones(1, 9, dtype=torch.float64)
    torch.testing.assert_close(excess_kurtosis(m, 0, ones), excess_kurtosis(m, 0))


# -- block salience on a tiny BERT ---------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("sal-bert"), "bert", layers=1, hidden=HIDDEN,
                            heads=HEADS, ffn=FFN, seed=5)


def load(folder):
    model = randomize_biases_and_norms(load_classifier(str(folder), 2), seed=3)
    return model.eval()  # no dropout: the forward is deterministic


def batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (3, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # padding positions are summed too (docs/method.md#salience)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


class Capture:
    """Our own tap: the input of a module, kept with its gradient."""

    def __init__(self, module):
        self.h = None
        self.handle = module.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        self.h = args[0]
        if self.h.requires_grad:
            self.h.retain_grad()

    def plain(self) -> torch.Tensor:
        h = self.h.detach().reshape(-1, self.h.shape[-1]).double()
        g = self.h.grad.detach().reshape(-1, self.h.shape[-1]).double()
        return h.abs().sum(0) * g.abs().sum(0)  # a_d · g_d, (D,)

    def mean(self) -> torch.Tensor:
        return self.h.detach().reshape(-1, self.h.shape[-1]).double().mean(0)  # x̄


def run_step(model, collector, captures, seed=0):
    collector.active = True
    out = model(**batch(model, seed))
    out.loss.backward()
    return collector.step_scores()


def head_kurtosis(weight: torch.Tensor, x_mean: torch.Tensor) -> list[float]:
    o = weight.detach().double() * x_mean[None, :]  # (d_m, n_h·d_h)
    return [numpy_kurtosis(o[:, h * HEAD_DIM:(h + 1) * HEAD_DIM].flatten().numpy()) for h in range(HEADS)]


def neuron_kurtosis(weight: torch.Tensor, x_mean: torch.Tensor) -> list[float]:
    o = weight.detach().double() * x_mean[None, :]  # (d_m, n_f)
    return [numpy_kurtosis(o[:, j].numpy()) for j in range(o.shape[1])]


@pytest.mark.parametrize("use_kurtosis", [False, True])
def test_head_and_neuron_scores_match_independent_computation(tiny_dir, use_kurtosis):
    model = load(tiny_dir)
    spec = get_spec(model)
    layer = spec.layers(model)[0]
    collector = SalienceCollector(model, spec, use_kurtosis=use_kurtosis, outlier_scale="raw")
    attn_out, ffn_down = spec.attention(layer).output, spec.ffn(layer).down
    cap_head, cap_neuron = Capture(attn_out), Capture(ffn_down)
    scores = run_step(model, collector, (cap_head, cap_neuron))

    plain_d = cap_head.plain()
    expected_heads = plain_d.view(HEADS, HEAD_DIM).sum(-1)  # S̃(head) = Σ over its d_h dims
    expected_neurons = cap_neuron.plain()  # S̃(neuron j) = S̃_j
    assert float(expected_heads.min()) > 0 and float(expected_neurons.max()) > 0  # not vacuous
    if use_kurtosis:
        kh = head_kurtosis(attn_out.weight, cap_head.mean())
        kn = neuron_kurtosis(ffn_down.weight, cap_neuron.mean())
        expected_heads = expected_heads + torch.tensor([np.sqrt(max(k, 0)) for k in kh], dtype=torch.float64)
        expected_neurons = expected_neurons + torch.tensor([np.sqrt(max(k, 0)) for k in kn],
                                                           dtype=torch.float64)
        assert any(k > 0 for k in kh + kn)  # the outlier term really contributes here
    assert len(scores["head"]) == 1 and len(scores["neuron"]) == 1
    assert scores["head"][0].shape == (HEADS,)
    assert scores["neuron"][0].shape == (FFN,)
    torch.testing.assert_close(scores["head"][0].double(), expected_heads, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(scores["neuron"][0].double(), expected_neurons, rtol=1e-4, atol=1e-7)
    assert scores["hidden"][0].shape == (HIDDEN,)
    assert bool((scores["hidden"][0] >= 0).all())


def test_kurtosis_term_is_the_difference(tiny_dir):
    """Same model, same batch: kurtosis-on minus kurtosis-off is √max(Kurt, 0) of each block."""
    results = {}
    for use in (False, True):
        model = load(tiny_dir)
        spec = get_spec(model)
        layer = spec.layers(model)[0]
        collector = SalienceCollector(model, spec, use_kurtosis=use, outlier_scale="raw")
        cap = Capture(spec.attention(layer).output)
        results[use] = run_step(model, collector, (cap,))
        kh = head_kurtosis(spec.attention(layer).output.weight, cap.mean())
    diff = (results[True]["head"][0] - results[False]["head"][0]).double()
    torch.testing.assert_close(diff, torch.tensor([np.sqrt(max(k, 0)) for k in kh], dtype=torch.float64),
                               rtol=1e-4, atol=1e-6)


def test_scores_use_the_adapter_weight_in_the_outlier_term(tiny_dir):
    """W_eff = W + s·B·A when the output projection carries an adapter (docs/method.md#outlier-term)."""
    from aptune.lora import inject_lora

    model = load(tiny_dir)
    spec = get_spec(model)
    inject_lora(model, 2, 4, ["attention.output.dense"], trainable_modules=spec.head_modules)
    layer = spec.layers(model)[0]
    proj = spec.attention(layer).output
    with torch.no_grad():
        proj.lora_B.normal_(0, 0.5, generator=torch.Generator().manual_seed(9))
    collector = SalienceCollector(model, spec, use_kurtosis=True, outlier_scale="raw")
    cap = Capture(proj)
    scores = run_step(model, collector, (cap,))
    w_eff = proj.weight + proj.delta_weight()
    expected = cap.plain().view(HEADS, HEAD_DIM).sum(-1) + torch.tensor(
        [np.sqrt(max(k, 0)) for k in head_kurtosis(w_eff, cap.mean())], dtype=torch.float64)
    torch.testing.assert_close(scores["head"][0].double(), expected, rtol=1e-4, atol=1e-6)


# -- the outlier term's scale (docs/method.md#outlier-term) ------------------------------------
def one_step_scores(folder, loss_scale=1.0, alive=None, mask_head0=False, **collector_args):
    model = load(folder)
    spec = get_spec(model)
    layer = spec.layers(model)[0]
    with torch.no_grad():  # one outlier weight per projection: d_m = 8 rows are too few for any otherwise
        spec.ffn(layer).down.weight[0, 1] *= 30
        spec.attention(layer).output.weight[0, HEAD_DIM] *= 30
    if mask_head0:
        masks = Masks.ones_like(model, spec)
        masks.head[0] = torch.tensor([0.0, 1.0])
        apply_masks(model, spec, masks)
    collector = SalienceCollector(model, spec, **collector_args)
    collector.active = True
    (model(**batch(model)).loss * loss_scale).backward()
    return {t: torch.cat(v).double() for t, v in collector.step_scores(alive=alive).items()}


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_scaled_outlier_term_sums_to_its_block_types_salience(tiny_dir, weight):
    """salience_total: per block type, the added term is √max(Kurt, 0) times one factor, chosen so
    that it sums to `weight` times the activation x gradient salience of that type."""
    plain = one_step_scores(tiny_dir, use_kurtosis=False)
    raw = one_step_scores(tiny_dir, use_kurtosis=True, outlier_scale="raw")
    scaled = one_step_scores(tiny_dir, use_kurtosis=True, outlier_weight=weight)
    for t in ("head", "neuron", "hidden"):
        raw_term, added = raw[t] - plain[t], scaled[t] - plain[t]
        assert float(raw_term.sum()) > 0 and float(plain[t].sum()) > 0  # not vacuous
        assert float(added.sum()) == pytest.approx(weight * float(plain[t].sum()), rel=1e-4)
        factor = weight * plain[t].sum() / raw_term.sum()
        torch.testing.assert_close(added, raw_term * factor, rtol=1e-4, atol=1e-9)


def test_scaled_scores_follow_the_loss_scale_and_raw_scores_do_not(tiny_dir):
    """Scaling the loss by c scales S̃ by c. With salience_total the whole score scales by c, so
    no ranking changes; raw adds a term that does not scale, so its weight depends on the loss."""
    c = 1000.0
    for scale, follows in (("salience_total", True), ("raw", False)):
        small = one_step_scores(tiny_dir, use_kurtosis=True, outlier_scale=scale)
        large = one_step_scores(tiny_dir, loss_scale=c, use_kurtosis=True, outlier_scale=scale)
        for t in ("head", "neuron", "hidden"):
            assert torch.allclose(large[t], small[t] * c, rtol=1e-4, atol=1e-9) == follows, (scale, t)


def test_dead_blocks_neither_get_nor_set_the_outlier_scale(tiny_dir):
    """Blocks outside `alive` (mask 0) get no outlier term, and the factor is set by the others."""
    alive = {"head": torch.tensor([False, True]), "neuron": torch.ones(FFN, dtype=torch.bool),
             "hidden": torch.ones(HIDDEN, dtype=torch.bool)}
    plain = one_step_scores(tiny_dir, mask_head0=True, use_kurtosis=False)
    scaled = one_step_scores(tiny_dir, alive=alive, mask_head0=True, use_kurtosis=True)
    added = {t: scaled[t] - plain[t] for t in plain}
    assert float(added["head"][0]) == 0.0 and float(plain["head"][0]) == 0.0
    assert float(added["head"][1]) == pytest.approx(float(plain["head"][1]), rel=1e-4)
    # hidden dims: two dead ones (the planted outliers' row 0 stays alive); every head alive, so
    # each row's kurtosis reads all n_h·d_h = 8 of its attention-output entries
    alive = {"head": torch.ones(HEADS, dtype=torch.bool), "neuron": torch.ones(FFN, dtype=torch.bool),
             "hidden": torch.tensor([True] * (HIDDEN - 2) + [False, False])}
    plain = one_step_scores(tiny_dir, use_kurtosis=False)
    scaled = one_step_scores(tiny_dir, alive=alive, use_kurtosis=True)
    added = scaled["hidden"] - plain["hidden"]
    assert added[-2:].tolist() == [0.0, 0.0]
    assert float(added[:-2].sum()) == pytest.approx(float(plain["hidden"][:-2].sum()), rel=1e-4)


@pytest.mark.parametrize("use_kurtosis", [False, True])
def test_masked_head_gets_zero_salience(tiny_dir, use_kurtosis):
    model = load(tiny_dir)
    spec = get_spec(model)
    masks = Masks.ones_like(model, spec)
    masks.head[0] = torch.tensor([0.0, 1.0])
    apply_masks(model, spec, masks)  # before the collector, as in APT: it sees the masked context
    collector = SalienceCollector(model, spec, use_kurtosis=use_kurtosis)
    heads = run_step(model, collector, ())["head"][0]
    assert float(heads[0]) == 0.0
    assert float(heads[1]) > 0.0


def test_gradient_accumulates_over_micro_batches(tiny_dir):
    """Two forward/backward passes before step_scores: a and g are summed, then multiplied."""
    model = load(tiny_dir)
    spec = get_spec(model)
    layer = spec.layers(model)[0]
    collector = SalienceCollector(model, spec, use_kurtosis=False)
    collector.active = True
    caps = []
    for seed in (0, 1):
        cap = Capture(spec.ffn(layer).down)
        model(**batch(model, seed)).loss.backward()
        cap.handle.remove()
        caps.append(cap)
    a = sum(c.h.detach().reshape(-1, FFN).double().abs().sum(0) for c in caps)
    g = sum(c.h.grad.reshape(-1, FFN).double().abs().sum(0) for c in caps)
    scores = collector.step_scores()
    torch.testing.assert_close(scores["neuron"][0].double(), a * g, rtol=1e-4, atol=1e-7)
    # ...which differs from the sum of per-pass products
    per_pass = sum(c.plain() for c in caps)
    assert not torch.allclose(a * g, per_pass)


def test_step_scores_reset_the_taps(tiny_dir):
    model = load(tiny_dir)
    spec = get_spec(model)
    collector = SalienceCollector(model, spec, use_kurtosis=False)
    run_step(model, collector, ())
    for tap in collector.head_taps + collector.neuron_taps + collector.hidden_taps:
        assert tap.act is None and tap.grad is None and tap.rows == 0


# -- when salience is not collected ----------------------------------------------------------
def taps(collector):
    return [t for t in collector.head_taps + collector.neuron_taps + collector.hidden_taps if t is not None]


def test_inactive_collector_collects_nothing(tiny_dir):
    model = load(tiny_dir)
    spec = get_spec(model)
    collector = SalienceCollector(model, spec, use_kurtosis=True)
    collector.active = False
    model(**batch(model)).loss.backward()
    assert all(t.act is None and t.grad is None and t.rows == 0 for t in taps(collector))
    scores = collector.step_scores()
    assert all(s.numel() == 0 for s in scores["head"] + scores["neuron"] + scores["hidden"])


def test_no_grad_forward_collects_nothing(tiny_dir):
    """The teacher and evaluation run under no_grad: their activations must not feed salience."""
    model = load(tiny_dir)
    spec = get_spec(model)
    collector = SalienceCollector(model, spec, use_kurtosis=False)
    collector.active = True
    with torch.no_grad():
        model(**batch(model))
    assert all(t.act is None and t.rows == 0 for t in taps(collector))
    # and a later student step is unaffected by the no_grad pass
    layer = spec.layers(model)[0]
    cap = Capture(spec.attention(layer).output)
    model(**batch(model, 1)).loss.backward()
    scores = collector.step_scores()
    torch.testing.assert_close(scores["head"][0].double(), head_sum(cap), rtol=1e-4, atol=1e-7)


def head_sum(cap):
    return cap.plain().view(HEADS, HEAD_DIM).sum(-1)


def test_detach_removes_the_taps(tiny_dir):
    model = load(tiny_dir)
    spec = get_spec(model)
    collector = SalienceCollector(model, spec, use_kurtosis=False)
    collector.detach()
    collector.active = True
    model(**batch(model)).loss.backward()
    assert all(t.act is None for t in taps(collector))


# -- EMA -----------------------------------------------------------------------------------------
def test_ema_two_steps_hand_values(tiny_dir):
    model = load(tiny_dir)
    collector = SalienceCollector(model, get_spec(model), use_kurtosis=False, beta=0.85)
    s1 = {"head": [torch.tensor([1.0, 4.0])], "neuron": [torch.tensor([2.0, 0.0, 8.0, 1.0])],
          "hidden": [torch.arange(8.0)]}
    s2 = {"head": [torch.tensor([3.0, 0.0])], "neuron": [torch.tensor([0.0, 5.0, 8.0, 1.0])],
          "hidden": [torch.ones(8)]}
    collector.update_ema(s1)
    for key in s1:
        torch.testing.assert_close(collector.ema[key][0], 0.15 * s1[key][0])
    collector.update_ema(s2)
    for key in s1:
        torch.testing.assert_close(collector.ema[key][0], 0.85 * 0.15 * s1[key][0] + 0.15 * s2[key][0])
    # the inputs were not modified in place
    assert s1["head"][0].tolist() == [1.0, 4.0]


def test_ema_zero_scores_decay(tiny_dir):
    model = load(tiny_dir)
    collector = SalienceCollector(model, get_spec(model), use_kurtosis=False, beta=0.85)
    s = {"head": [torch.tensor([1.0, 1.0])], "neuron": [torch.ones(4)], "hidden": [torch.ones(8)]}
    zero = {k: [torch.zeros_like(v[0])] for k, v in s.items()}
    collector.update_ema(s)
    for _ in range(3):
        collector.update_ema(zero)
    torch.testing.assert_close(collector.ema["head"][0], torch.full((2,), 0.15 * 0.85 ** 3))


# -- hidden-dimension taps ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_layer_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("sal-bert2"), "bert", layers=2, hidden=HIDDEN,
                            heads=HEADS, ffn=FFN, seed=6)


def hidden_tap_reference(folder):
    """Run one step with the collector and, independently, full backward hooks on each block.

    Returns the collector's hidden taps (before step_scores resets them) and per tap our
    (a, g): a = Σ|input|, g = Σ|∂L/∂input through that module only| (what a full backward hook on
    the module reports), and for the final output the full gradient.
    """
    model = load(folder)
    spec = get_spec(model)
    collector = SalienceCollector(model, spec, use_kurtosis=False)
    collector.active = True
    seen = {}

    def record(name):
        def fwd(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            seen[name + "/a"] = x.detach().reshape(-1, HIDDEN).abs().sum(0).double()

        def bwd(module, grad_input, grad_output):
            seen[name + "/g"] = grad_input[0].reshape(-1, HIDDEN).abs().sum(0).double()
        return fwd, bwd

    order = []
    for i, layer in enumerate(spec.layers(model)):
        for name, module in ((f"attn{i}", spec.attention_block(layer)),
                             (f"ffn{i}", spec.ffn_input_block(layer))):
            fwd, bwd = record(name)
            module.register_forward_pre_hook(fwd, with_kwargs=True)
            module.register_full_backward_hook(bwd)
            order.append(name)

    def final_fwd(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        seen["final/a"] = out.detach().reshape(-1, HIDDEN).abs().sum(0).double()

    def final_bwd(module, grad_input, grad_output):
        seen["final/g"] = grad_output[0].reshape(-1, HIDDEN).abs().sum(0).double()

    last = spec.layers(model)[-1]
    last.register_forward_hook(final_fwd)
    last.register_full_backward_hook(final_bwd)
    order.append("final")
    model(**batch(model)).loss.backward()
    return collector.hidden_taps, order, seen


def test_hidden_taps_attention_input_and_final_output(two_layer_dir):
    taps_, order, seen = hidden_tap_reference(two_layer_dir)
    assert len(taps_) == len(order) == 5  # 2 layers x (attention, FFN) + the final output
    for tap, name in zip(taps_, order):
        if name.startswith("ffn"):
            continue
        torch.testing.assert_close(tap.act.double(), seen[name + "/a"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(tap.grad.double(), seen[name + "/g"], rtol=1e-4, atol=1e-9)


def test_hidden_taps_ffn_input_use_block_gradient(two_layer_dir):
    taps_, order, seen = hidden_tap_reference(two_layer_dir)
    for tap, name in zip(taps_, order):
        if name.startswith("ffn"):
            torch.testing.assert_close(tap.act.double(), seen[name + "/a"], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(tap.grad.double(), seen[name + "/g"], rtol=1e-4, atol=1e-9)


def test_per_stream_mean_divides_each_tap_by_its_stream_length(tiny_dir, tmp_path):
    """The original T5 code's normalisation: Σ_b mean_t |H| times Σ_b Σ_t |∂L/∂H|, i.e. each tap's
    S̃ over its own stream's length. `auto` picks it for encoder-decoders only."""
    model = load(tiny_dir)
    spec = get_spec(model)
    plain = run_step(model, SalienceCollector(model, spec, use_kurtosis=False), ())
    model.zero_grad()
    per_stream = run_step(model, SalienceCollector(model, spec, use_kurtosis=False,
                                                   position_norm="per_stream_mean"), ())
    length = batch(model)["input_ids"].shape[1]  # 6 positions, padding included
    for kind in ("head", "neuron", "hidden"):
        torch.testing.assert_close(per_stream[kind][0] * length, plain[kind][0], rtol=1e-5, atol=1e-9)
    assert not SalienceCollector(model, spec).per_stream_mean
    from transformers import AutoModelForSeq2SeqLM

    t5 = AutoModelForSeq2SeqLM.from_pretrained(build_tiny_model(tmp_path / "t5", "t5"))
    assert SalienceCollector(t5, get_spec(t5)).per_stream_mean


@pytest.mark.parametrize("prune_hidden", [False, True], ids=["heads-neurons", "and-hidden"])
def test_masked_and_compacted_models_score_alike_with_the_outlier_term(tiny_bert_dir, prune_hidden):
    """The outlier term reads alive entries only: a masked unit's column, or a masked dim's row,
    would otherwise enter the kurtosis as zeros in the masked model and not at all once it is
    compacted, and the pruning decisions would depend on when the student was compacted."""
    from aptune.apt.callback import attach_apt
    from aptune.apt.config import APTConfig
    from aptune.lora import lora_modules
    from tests.helpers import random_binary_masks

    torch.manual_seed(0)
    model = load_classifier(str(tiny_bert_dir), 2).eval()
    spec = get_spec(model)
    cfg = APTConfig(sparsity=0.6, use_kurtosis=True)
    cfg.validate()
    cb = attach_apt(model, spec, cfg)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    drawn = random_binary_masks(model, spec, 0.6, torch.Generator().manual_seed(4))
    with torch.no_grad():
        for mask, value in zip(cb.pruner.masks.all(), drawn.all()):
            mask.copy_(value)
        if not prune_hidden:
            cb.pruner.masks.hidden.fill_(1)
    cb.pruner.masks.read_facts()
    inputs = batch(model, seed=1)

    def scores():
        collector = cb.pruner.salience
        collector.active = True
        model.zero_grad()
        model(**inputs).loss.backward()
        collector.active = False
        return collector.step_scores(alive=cb.pruner.masks.alive())

    masked = scores()
    kept = cb.pruner.masks.kept()
    cb._compact(model, {})
    compacted = scores()
    pairs = [*zip(masked["head"], compacted["head"], kept.heads),
             *zip(masked["neuron"], compacted["neuron"], kept.neurons),
             (masked["hidden"][0], compacted["hidden"][0], kept.hidden)]
    for full, small, units in pairs:
        kept_scores = full[torch.as_tensor(units, dtype=torch.long)]
        torch.testing.assert_close(kept_scores, small, atol=1e-6, rtol=1e-5)
    assert sum(float(v.sum()) for v in compacted["hidden"]) > 0

