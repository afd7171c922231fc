"""No host reads in APT's hot path (issue 15, item 6): between pruning points, evaluations and
logging, a training step reads no tensor value back to the host (`.item()`, `.tolist()`,
`bool(t)`, `float(t)`, `int(t)`, `nonzero`), so that GPU steps are queued, not serialised. The
reads are counted on the CPU by wrapping those methods; only calls made by aptune's own code count
(torch's optimizer reads its CPU step counter, for instance)."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import aptune
import aptune.apt.callback as apt_callback
from aptune.apt.salience import SalienceCollector
from aptune.apt.teacher import apply_transform, layer_loss, map_layers, mapped_layer_loss
from aptune.arch import get_spec
from aptune.config import TrainConfig
from aptune.losses import lora_layer_transform
from aptune.models import load_classifier
from aptune.pipeline import run_training
from aptune.surgery import prune_linear_in

torch.set_num_threads(1)

PACKAGE = str(Path(aptune.__file__).parent)
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero")
# A draw of the run's CPU generator (teacher layers): a host tensor, nothing to wait for.
HOST_ONLY = {("apt/teacher.py", "sample_teacher_layers")}


class ReadCounter:
    """Wraps the reading methods; records (step, file, function) of every call from aptune."""

    def __init__(self, monkeypatch) -> None:
        self.step: int | None = None
        self.calls: dict[int | None, list[tuple[str, str, str]]] = defaultdict(list)
        for name in READS:
            self._wrap(monkeypatch, torch.Tensor, name)
        self._wrap(monkeypatch, torch, "nonzero")

    def _wrap(self, monkeypatch, owner, name: str) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(PACKAGE):
                where = (Path(caller.co_filename).relative_to(PACKAGE).as_posix(), caller.co_name)
                if where not in HOST_ONLY:
                    self.calls[self.step].append((name, *where))
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)


def special_steps(sched, total: int, log_every: int, eval_every: int) -> set[int]:
    """Steps (0-based, as `trainer.step` reads in on_step_begin) that may read: teacher checks at
    window starts, mask steps, pruning points, distillation start and end, logging, evaluation."""
    special = set(sched.window_starts())
    for t in range(total):
        k = sched.window_of(t)
        step = t + 1  # trainer.step in after_step and after it
        if (k is not None and t <= sched.points[k] - 2) or step in sched.points \
                or t == sched.distill_start or step == sched.distill_end \
                or step % log_every == 0 or step % eval_every == 0 or step == total:
            special.add(t)
    return special


def test_apt_steps_between_pruning_points_read_nothing(monkeypatch, tiny_bert_dir, tiny_data_dir, tmp_path):
    counter = ReadCounter(monkeypatch)
    seen: dict[int, dict[str, bool]] = {}  # step -> its phase
    callbacks = []
    begin = apt_callback.APTCallback.on_step_begin

    def on_step_begin(self, trainer, batch):
        counter.step = trainer.step
        begin(self, trainer, batch)
        masks = self.pruner.masks  # the test's own reads are not aptune's: not counted
        seen[trainer.step] = {"distilling": self.distillation.teacher is not None
                              and self.schedule.in_distillation(trainer.step),
                              "salience": self.pruner.salience.active,
                              # masked, or compacted below a teacher that keeps its own copy
                              "pruned": any(bool((m == 0).any()) for m in masks.all())
                              or getattr(self.distillation.teacher, "backbone", None) is not None}
        callbacks.append(self)

    monkeypatch.setattr(apt_callback.APTCallback, "on_step_begin", on_step_begin)
    cfg = TrainConfig(model=str(tiny_bert_dir), data_dir=str(tiny_data_dir), output_dir=str(tmp_path / "run"),
                      task="sst2", method="apt", epochs=7, batch_size=16, eval_every=1000, lr=2e-3,
                      teacher_gate=False)  # the tiny model scores at chance; the distillation phase is wanted
    metrics = run_training(cfg, show_progress=False)
    total, sched = metrics["steps"], callbacks[0].schedule
    hot = sorted(set(range(total)) - special_steps(sched, total, cfg.log_every, cfg.eval_every))
    # The hot steps cover every phase: salience on, distillation with a teacher, masks partly 0.
    assert any(seen[t]["salience"] and not seen[t]["distilling"] for t in hot)
    assert any(seen[t]["salience"] and seen[t]["distilling"] and seen[t]["pruned"] for t in hot)
    assert any(not seen[t]["salience"] and seen[t]["distilling"] and seen[t]["pruned"] for t in hot)
    assert sum(seen[t]["pruned"] for t in hot) >= 10
    reads = {t: counter.calls[t] for t in hot if counter.calls[t]}
    assert reads == {}
    # ...while pruning points do read (the counter sees reads at all).
    assert any(counter.calls[p - 1] for p in sched.points)


def test_salience_summed_across_processes_stays_on_the_device(monkeypatch, tmp_path):
    """The multi-process path: tap vectors and row counts are summed without a trip to the host,
    and with one process give exactly the scores of the plain path."""
    from tests.helpers import build_tiny_model

    folder = build_tiny_model(tmp_path / "bert", "bert", layers=2, hidden=16, heads=2, ffn=8, seed=3)
    model = load_classifier(str(folder), 2).eval()
    collector = SalienceCollector(model, get_spec(model), use_kurtosis=True)
    ids = torch.randint(5, model.config.vocab_size, (3, 6), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1])}

    def scores(reduce):
        collector.active = True
        model.zero_grad()
        model(**inputs).loss.backward()
        return collector.step_scores(reduce)

    plain = scores(None)
    counter = ReadCounter(monkeypatch)
    summed = scores(lambda flat: flat.clone())  # one process: the sum is the vector itself
    assert dict(counter.calls) == {}
    monkeypatch.undo()
    for kind in plain:
        for a, b in zip(plain[kind], summed[kind]):
            assert torch.equal(a, b), kind


@pytest.mark.parametrize("component", ["head_activation_gradient", "neuron_kurtosis", "hidden_kurtosis"])
def test_salience_components_are_read_when_asked(component, tmp_path):
    """The per-step score terms stay tensors; the pruning log still gets plain floats."""
    from tests.helpers import build_tiny_model

    folder = build_tiny_model(tmp_path / "bert", "bert", layers=1, hidden=16, heads=2, ffn=8, seed=4)
    model = load_classifier(str(folder), 2).eval()
    collector = SalienceCollector(model, get_spec(model), use_kurtosis=True)
    collector.active = True
    ids = torch.randint(5, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1])).loss.backward()
    collector.step_scores()
    value = collector.last_components[component]
    assert type(value) is float and value > 0


@pytest.mark.parametrize("near", [True, False], ids=["one-to-one", "shared-student-layer"])
def test_layer_loss_with_the_mapping_on_the_device_matches_the_host_mapping(near, monkeypatch):
    """L_layer with φ kept on the device equals L_layer under the host's φ, the loss bit for bit
    and the gradients to rounding, also when several teacher layers map onto one student layer
    (`near` False: random teachers, which all land on one layer)."""
    g = torch.Generator().manual_seed(11)
    d, alive, picks = 16, [True, False, True, True, True], [0, 2, 3, 4]
    weights = [torch.randn(d, d, generator=g) * 0.3 for _ in alive]
    x = torch.randn(2, 5, d, generator=g)
    tr = lora_layer_transform(d)
    with torch.no_grad():
        tr.lora_B.copy_(torch.randn(d, tr.r, generator=g) * 0.01)

    def layers(h: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for w in weights:
            h = torch.tanh(h @ w) + h
            out.append(h)
        return out

    with torch.no_grad():
        noise = [torch.randn(x.shape, generator=g) for _ in alive]
        teacher = [h + 0.01 * n if near else n for h, n in zip(layers(x), noise)]

    def run(device_side: bool):
        leaf = x.clone().requires_grad_(True)
        student = layers(leaf)
        task = student[-1].pow(2).mean()  # the model's own loss comes first, as in the loop
        if device_side:
            counter = ReadCounter(monkeypatch)
            loss = mapped_layer_loss(teacher, student, picks, alive, tr)
            assert dict(counter.calls) == {}
            monkeypatch.undo()
        else:
            loss = layer_loss(teacher, student, map_layers(teacher, student, picks, alive, tr), tr)
        tr.zero_grad()
        (task + 0.7 * (loss - task)).backward()
        return [loss.detach(), leaf.grad, tr.lora_A.grad, tr.lora_B.grad]

    with torch.no_grad():
        chosen = list(map_layers(teacher, layers(x), picks, alive, tr).values())
    assert (len(set(chosen)) == len(picks)) == near  # the case the test means to cover
    host, device = run(False), run(True)
    assert torch.equal(host[0], device[0])  # the same φ: the same loss
    # The gradients add the same terms; the two graphs may add them in another order.
    for a, b in zip(host[1:], device[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("narrow", [False, True])
def test_tr_without_its_identity_product_is_bit_identical(narrow):
    """`apply_transform` skips Tr's frozen identity product (a placement instead of a d × d
    matmul): output and gradients equal LoRALinear.forward's bit for bit, for the square Tr that
    shares the backbone and for the one that reads a narrower student's dims (after p_K)."""
    g = torch.Generator().manual_seed(5)
    d_t = 12
    tr = lora_layer_transform(d_t)
    with torch.no_grad():
        tr.lora_B.copy_(torch.randn(d_t, tr.r, generator=g) * 0.1)
    if narrow:
        prune_linear_in(tr, torch.tensor([0, 2, 3, 7, 8, 11]))  # (d_t, d_t) -> (d_t, 6)
    x = torch.randn(3, 4, tr.in_features, generator=g)

    def run(fn):
        leaf = x.clone().requires_grad_(True)
        tr.zero_grad()
        out = fn(leaf)
        (out * torch.linspace(-1, 1, d_t)).pow(2).sum().backward()
        return [out.detach(), leaf.grad, tr.lora_A.grad, tr.lora_B.grad]

    for plain, placed in zip(run(tr), run(lambda h: apply_transform(tr, h))):
        assert torch.equal(plain, placed)
