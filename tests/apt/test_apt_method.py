"""APT end to end through the Python API on tiny BERT/RoBERTa models and tiny SST-2 data: the
budget holds, ranks grow (docs/method.md#short-runs), the export reloads with the same dev score
(docs/method.md#saving-pruned-models), the ablation switches run (docs/method.md#ablations), and
bad input fails with a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aptune.config import TrainConfig
from aptune.counting import non_embedding_parameters
from aptune.errors import AptuneError
from aptune.evaluate import evaluate_saved
from aptune.export import load_pruned
from aptune.lora import LoRALinear
from aptune.pipeline import run_training

torch.set_num_threads(1)

# 200 training rows at batch 16: 13 steps per epoch. The relative schedule needs >= 84 steps.
BASE = dict(task="sst2", method="apt", epochs=10, batch_size=16, eval_every=10, lr=2e-3)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("APTUNE_DATA_DIR", raising=False)


def train(model_dir: Path, data_dir: Path, out: Path, **overrides) -> dict:
    cfg = TrainConfig(model=str(model_dir), data_dir=str(data_dir), output_dir=str(out),
                      **{**BASE, **overrides})
    return run_training(cfg, show_progress=False)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def full_run(request, tiny_bert_dir, tiny_roberta_dir, tiny_data_dir, tmp_path_factory):
    model_dir = {"bert": tiny_bert_dir, "roberta": tiny_roberta_dir}[request.param]
    out = tmp_path_factory.mktemp(f"apt-{request.param}") / "run"
    return train(model_dir, tiny_data_dir, out), tiny_data_dir


def test_budget_holds(full_run):
    metrics, _ = full_run
    params = metrics["params"]
    assert params["non_embedding"] <= 0.40 * params["dense_non_embedding"]  # no tolerance
    assert params["non_embedding"] > 0
    assert metrics["steps"] == 130
    log = metrics["method_settings"]["pruning_log"]
    assert log and log[-1]["kept_target"] == pytest.approx(0.4)
    assert log[-1]["kept_ratio"] < 0.4  # the budget quantity C (strict <)


def test_schedule_and_structure_are_reported(full_run):
    metrics, _ = full_run
    ms = metrics["method_settings"]
    sched = ms["schedule"]
    assert sched["total_steps"] == 130
    assert 3 <= len(sched["points"]) <= 10
    assert sched["kept"][-1] == pytest.approx(0.4)
    assert sched["end"] == sched["points"][-1] == 91  # 70 % of T
    assert sched["distill_start"] is not None and sched["distill_end"] == 104  # 80 % of T
    assert len(sched["budgets"]) == len(sched["points"])
    # TTA counts only evaluations at the final structure: after the last pruning point
    final = [r["step"] for r in metrics["history"] if r["at_final_size"]]
    assert final and min(final) > sched["end"]
    assert all(r["at_final_size"] == (r["step"] >= min(final)) for r in metrics["history"])
    structure = ms["structure"]
    assert set(structure) >= {"hidden", "heads", "neurons"}
    assert len(structure["heads"]) == len(structure["neurons"]) == 2
    kept = sum(len(h) for h in structure["heads"]) + sum(len(n) for n in structure["neurons"])
    assert kept < 2 * 4 + 2 * 64  # something was pruned


def test_ranks_grew(full_run):
    metrics, _ = full_run
    ms = metrics["method_settings"]
    history = ms["rank_history"]
    first, final = history[0]["ranks"], ms["final_ranks"]
    assert len(first) == 6  # q, v, FFN-up in 2 layers
    # A sub-layer pruned to nothing takes its adapters with it; the others stay
    assert set(final) <= set(first) and len(final) >= 3
    assert all(r == 8 for r in first.values())
    assert any(final[n] > first[n] for n in final)
    assert all(final[n] >= first[n] for n in final)
    assert all(r <= 64 for r in final.values())
    # one entry per pruning point after the start, at the points' steps
    assert [h["step"] for h in history[1:]] == ms["schedule"]["points"]


def test_saved_model_reloads_with_same_score(full_run):
    metrics, data_dir = full_run
    model_dir = Path(metrics["output_dir"]) / "model"
    model = load_pruned(model_dir)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # merged
    assert non_embedding_parameters(model) == metrics["params"]["non_embedding"]
    structure = metrics["method_settings"]["structure"]
    base = getattr(model, model.base_model_prefix)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    for layer, heads, neurons in zip(base.encoder.layer, structure["heads"], structure["neurons"]):
        if heads:
            assert layer.attention.self.query.out_features == len(heads) * head_dim
        if neurons:
            assert layer.intermediate.dense.out_features == len(neurons)
    assert base.embeddings.word_embeddings.weight.shape[1] == len(structure["hidden"])
    result = evaluate_saved(metrics["output_dir"], "sst2", data_dir=str(data_dir))
    assert result["eval"]["accuracy"] == metrics["eval"]["accuracy"]
    assert result["rows"] == 64


# -- ablations: each a short run (7 epochs = 91 steps) ----------------------------------------
@pytest.fixture(scope="module")
def ablation(tiny_bert_dir, tiny_data_dir, tmp_path_factory):
    cache: dict = {}

    def run(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in cache:  # one run per ablation, shared by its tests
            out = tmp_path_factory.mktemp("ablation") / "run"
            cache[key] = train(tiny_bert_dir, tiny_data_dir, out, **{"epochs": 7, **overrides})
        return cache[key]
    return run


def test_without_pruning_keeps_everything(ablation):
    m = ablation(prune=False)
    assert m["params"]["non_embedding"] == m["params"]["dense_non_embedding"]
    assert m["params"]["kept_ratio"] == 1.0
    ms = m["method_settings"]
    assert ms["schedule"]["kept"] == [1.0] * len(ms["schedule"]["points"])
    assert ms["schedule"]["distill_start"] is None
    assert any(r > 8 for r in ms["final_ranks"].values())  # rank growth unchanged (docs/method.md#ablations)


def _count_importance_updates(monkeypatch, run):
    import aptune.apt.ranks as apt_module

    calls = []
    original = apt_module.AdapterImportance.update

    def spy(self, sites):
        calls.append(len(sites))
        return original(self, sites)

    monkeypatch.setattr(apt_module.AdapterImportance, "update", spy)
    metrics = run()
    return calls, metrics


def test_adapter_importance_is_collected(monkeypatch, tiny_bert_dir, tiny_data_dir, tmp_path):
    calls, m = _count_importance_updates(
        monkeypatch, lambda: train(tiny_bert_dir, tiny_data_dir, tmp_path / "run", epochs=7))
    sched = m["method_settings"]["schedule"]
    assert len(calls) >= sched["end"] - sched["start"]  # every step of the pruning window


def test_adapter_importance_is_collected_without_pruning(monkeypatch, tiny_bert_dir, tiny_data_dir,
                                                        tmp_path):
    calls, m = _count_importance_updates(
        monkeypatch, lambda: train(tiny_bert_dir, tiny_data_dir, tmp_path / "run", epochs=7,
                                   prune=False))
    sched = m["method_settings"]["schedule"]
    assert len(calls) >= sched["end"] - sched["start"]


def test_without_rank_growth_keeps_rank_r(ablation):
    m = ablation(grow_ranks=False)
    ms = m["method_settings"]
    assert set(ms["final_ranks"].values()) == {8}
    assert all(set(h["ranks"].values()) == {8} for h in ms["rank_history"])
    assert m["params"]["non_embedding"] <= 0.40 * m["params"]["dense_non_embedding"]


def test_without_distillation(ablation):
    m = ablation(distill=False)
    ms = m["method_settings"]
    assert ms["schedule"]["distill_start"] is None and ms["schedule"]["distill_end"] is None
    assert ms["teacher_log"] == []  # no window start evaluates a teacher that nothing distils from
    assert m["params"]["non_embedding"] <= 0.40 * m["params"]["dense_non_embedding"]


def test_uniform_rank_selection(ablation):
    m = ablation(rank_selection="all")
    final = m["method_settings"]["final_ranks"]
    assert all(r > 8 for r in final.values())  # every adapter grows
    assert m["params"]["non_embedding"] <= 0.40 * m["params"]["dense_non_embedding"]


def test_without_kurtosis(ablation):
    m = ablation(use_kurtosis=False)
    ms = m["method_settings"]
    assert ms["use_kurtosis"] is False
    assert ms["pruning_log"]
    for entry in ms["pruning_log"]:
        comps = entry["salience_components"]
        assert comps["head_kurtosis"] == comps["neuron_kurtosis"] == comps["hidden_kurtosis"] == 0.0
        assert comps["head_activation_gradient"] > 0
    assert ms["pruning_log"][-1]["kept_ratio"] < 0.4  # the budget quantity C holds
    # with the kurtosis term the components are non-zero (the switch really switches)
    on = ablation()["method_settings"]["pruning_log"][-1]["salience_components"]
    assert on["neuron_kurtosis"] > 0


def test_without_kurtosis_budget_holds_on_reported_count(ablation):
    m = ablation(use_kurtosis=False)
    assert m["params"]["non_embedding"] <= 0.40 * m["params"]["dense_non_embedding"]


def test_kept_widths_rounded_to_a_multiple(ablation):
    """--kept-multiple 4: every layer's kept FFN neurons and the kept hidden dims are a multiple
    of 4 in the saved structure, and the budget still holds (rounding only ever removes)."""
    m = ablation(kept_multiple=4)
    structure = m["method_settings"]["structure"]
    assert len(structure["hidden"]) % 4 == 0
    assert all(len(neurons) % 4 == 0 for neurons in structure["neurons"])
    assert any(neurons for neurons in structure["neurons"])
    assert m["method_settings"]["pruning_log"][-1]["neurons"] % 4 == 0
    assert m["params"]["non_embedding"] <= 0.40 * m["params"]["dense_non_embedding"]
    plain = ablation()["method_settings"]["structure"]  # the switch really switches
    widths = [len(plain["hidden"])] + [len(neurons) for neurons in plain["neurons"]]
    assert any(w % 4 for w in widths)


@pytest.mark.parametrize("lr_schedule", ["segmented", "single"])
def test_learning_rate_schedule_over_distillation(ablation, lr_schedule):
    """segmented restarts the learning rate at distillation's start and end (the last segment at
    0.1x); single decays it once over the whole run, distillation or not
    (docs/method.md#learning-rate-schedule)."""
    m = ablation(eval_every=1, lr_schedule=lr_schedule)
    sched = m["method_settings"]["schedule"]
    lr = {r["step"]: r["lr"] for r in m["history"]}  # the LR of the step after each evaluation
    s_d, s_e = sched["distill_start"], sched["distill_end"]
    after_warmup = [lr[t] for t in sorted(lr) if t >= 10]
    decreasing = all(b <= a + 1e-12 for a, b in zip(after_warmup[:-1], after_warmup[1:]))
    assert decreasing == (lr_schedule == "single")
    if lr_schedule == "segmented":
        assert lr[s_d] < lr[s_d - 1] and lr[s_e] == 0.0 and max(lr[t] for t in lr if t > s_e) <= 0.1 * 2e-3


# -- bad input -----------------------------------------------------------------------------------
def test_too_short_run_raises(tiny_bert_dir, tiny_data_dir, tmp_path):
    with pytest.raises(AptuneError, match="too short") as err:
        train(tiny_bert_dir, tiny_data_dir, tmp_path / "run", epochs=2)  # 26 steps
    assert err.value.fix and "35" in err.value.fix
    assert not (tmp_path / "run").exists()  # no half-written run folder


@pytest.mark.parametrize("sparsity", [1.0, 0.0, -0.1, 1.5])
def test_bad_sparsity(sparsity, tiny_bert_dir, tiny_data_dir, tmp_path):
    with pytest.raises(AptuneError, match="--sparsity") as err:
        TrainConfig(model=str(tiny_bert_dir), data_dir=str(tiny_data_dir),
                    output_dir=str(tmp_path / "run"), **{**BASE, "sparsity": sparsity})
    assert err.value.fix


def test_target_modules_matching_nothing(tiny_bert_dir, tiny_data_dir, tmp_path):
    with pytest.raises(AptuneError, match="match no nn.Linear") as err:
        train(tiny_bert_dir, tiny_data_dir, tmp_path / "run", target_modules=["nothing_matches"])
    assert err.value.fix


def test_dev_evaluations_leave_the_training_state_as_it_was(monkeypatch, tiny_bert_dir, tiny_data_dir,
                                                            tmp_path):
    """The evaluations every `eval_every` steps and at each window start (where a teacher may be
    snapshotted) draw nothing from the random stream that dropout uses and feed neither the
    salience taps and EMA nor the adapter importance: when a run is evaluated cannot change what
    it learns or prunes."""
    from aptune.apt.callback import APTCallback
    from aptune.train.loop import Trainer

    def state(trainer):
        cb = next(c for c in trainer.callbacks if isinstance(c, APTCallback))
        salience = cb.pruner.salience
        taps = [t for t in salience.head_taps + salience.neuron_taps + salience.hidden_taps if t is not None]
        ema = [e.clone() for es in (salience.ema or {}).values() for e in es]
        return torch.get_rng_state(), ema, [t.rows for t in taps], cb.ranks.importance.scores, salience.active

    seen = []
    evaluate = Trainer.evaluate

    def checked(self):
        before = state(self)
        metrics = evaluate(self)
        seen.append((self.step, before, state(self)))
        return metrics

    monkeypatch.setattr(Trainer, "evaluate", checked)
    m = train(tiny_bert_dir, tiny_data_dir, tmp_path / "run", epochs=7, eval_every=5, teacher_gate=False)
    starts = {e["step"] for e in m["method_settings"]["teacher_log"]}
    assert starts and starts <= {step for step, _, _ in seen}  # window-start evaluations included
    assert any(b[4] for _, b, _ in seen)  # some evaluations ran while salience was collected
    for step, (rng_b, ema_b, taps_b, imp_b, _), (rng_a, ema_a, taps_a, imp_a, _) in seen:
        assert torch.equal(rng_b, rng_a), step
        assert len(ema_b) == len(ema_a) and all(torch.equal(x, y) for x, y in zip(ema_b, ema_a)), step
        assert taps_b == taps_a, step
        assert imp_b == imp_a, step
