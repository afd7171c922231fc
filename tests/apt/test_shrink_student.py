"""A student as small as its masks (issue 15, item 1): at the last pruning point (or at every
one) APT compacts the student while the teacher keeps a frozen copy of the backbone it was
snapshotted on. The compacted student computes what the masked one computed, the teacher what it
computed before, and the distillation loss is the same number: only the step gets cheaper."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from aptune.apt.callback import attach_apt
from aptune.apt.config import APTConfig
from aptune.arch import get_spec
from aptune.lora import lora_modules
from aptune.models import load_classifier
from tests.arch.test_t5 import tiny_t5
from tests.helpers import random_binary_masks


def _bert(tiny_bert_dir):
    model = load_classifier(str(tiny_bert_dir), 2)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, model.config.vocab_size, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    return model, {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def _t5(_):
    # float64: the teacher's merged adapters (W + s·B·A in one matrix) round differently from the
    # unmerged forward, and T5's norms amplify float32 rounding past 1e-5 (tests/arch/test_t5.py)
    model = tiny_t5(gated=True, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(2, 96, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.randint(2, 96, (3, 4), generator=g)
    return model, {"input_ids": ids, "attention_mask": mask, "labels": labels,
                   "decoder_input_ids": model._shift_right(labels)}  # as the task's collator gives


def _perturb(tensors, seed: int, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.add_(scale * torch.randn(t.shape, generator=g))


def _apt_student(build, tiny_bert_dir):
    """An APT student with moved adapters, in eval mode (dropout off: two forwards must see the
    same computation)."""
    torch.manual_seed(0)
    model, batch = build(tiny_bert_dir)
    spec = get_spec(model)
    cfg = APTConfig(sparsity=0.6, use_kurtosis=False)
    cfg.validate()
    cb = attach_apt(model, spec, cfg)
    model.eval()
    _perturb([m.lora_B for _, m in lora_modules(model)], 1)
    return model, batch, spec, cb


def _use_masks(cb, masks) -> None:
    """Give the student `masks` (0/1) in place of its own."""
    with torch.no_grad():
        for mask, value in zip(cb.pruner.masks.all(), masks.all()):
            mask.copy_(value)
    cb.pruner.masks.read_facts()


def _student_with_teacher(build, tiny_bert_dir):
    """`_apt_student` and a teacher snapshot of that state."""
    model, batch, spec, cb = _apt_student(build, tiny_bert_dir)
    cb.distillation.snapshot(model, 0.5)  # the teacher: this state, on the full backbone
    return model, batch, spec, cb


def _losses(cb, model, spec, batch, seed: int):
    """The student's forward and APT's distillation loss on it, with the layer draws seeded."""
    masks = cb.pruner.masks
    out = model(**batch, output_hidden_states=True)
    cb.distillation.generator.manual_seed(seed)
    loss = cb.distillation.loss(model, batch, out, masks, cb.pruner.salience,
                                masks.alive_layers(spec.stacks(model)), spec)
    teacher = cb.distillation.teacher.forward(model, batch, masks, cb.pruner.salience)
    return out, loss, teacher


@pytest.mark.parametrize("build", [_bert, _t5], ids=["bert", "t5-gated"])
def test_compacted_student_and_own_teacher_equal_the_masked_run(build, tiny_bert_dir):
    model, batch, spec, cb = _student_with_teacher(build, tiny_bert_dir)
    tr = cb._new_transform(model)
    _perturb([tr.lora_B], 2, 0.05)
    _perturb([m.lora_B for _, m in lora_modules(model)], 3)  # the student moves on
    layers = len(cb.pruner.masks.head)
    drawn = random_binary_masks(model, spec, 0.5, torch.Generator().manual_seed(4),
                                empty_attention=0, empty_ffn=layers - 1)
    _use_masks(cb, drawn)
    kept_dims = torch.nonzero(cb.pruner.masks.hidden).flatten()
    size_before = sum(p.numel() for p in model.parameters())
    frozen_before = {p.data_ptr() for p in model.parameters() if not p.requires_grad}
    # merged into new tensors: the adapted modules' weights (and their copied biases)
    adapted = {f"{name}.{part}" for name, _ in lora_modules(model) for part in ("weight", "bias")}
    with torch.no_grad():
        masked, loss_masked, teacher_masked = _losses(cb, model, spec, batch, seed=7)

    said = []
    cb._shrink_student(SimpleNamespace(unwrapped_model=model, step=30, say=said.append), {})

    teacher = cb.distillation.teacher
    assert teacher.backbone is not None and not any(p.requires_grad for p in teacher.backbone.parameters())
    assert sum(p.numel() for p in model.parameters()) < 0.8 * size_before
    # the copy holds the student's former frozen tensors themselves (nothing frozen is held
    # twice), except the adapted weights, which it holds merged, and the head, the snapshot's
    copied = dict(teacher.backbone.named_parameters())
    assert not lora_modules(teacher.backbone)
    assert {n for n in adapted if n.endswith("weight")} <= copied.keys()
    own = {n: p for n, p in copied.items() if n not in teacher.state and n not in adapted}
    assert own and all(p.data_ptr() in frozen_before for p in own.values())
    assert tr in cb.pruner.hidden_readers and tr not in cb.pruner.hidden_followers
    assert tr.in_features == kept_dims.numel() and tr.out_features == len(teacher.structure.hidden)
    assert "the student is compacted to its masks" in said[0]
    with torch.no_grad():
        compacted, loss_compacted, teacher_own = _losses(cb, model, spec, batch, seed=7)
    torch.testing.assert_close(compacted.logits, masked.logits, atol=1e-5, rtol=1e-5)
    hidden = [sum(spec.stack_hidden_states(out), []) for out in (compacted, masked)]
    for h_c, h_m in zip(*hidden):
        torch.testing.assert_close(h_c, h_m.index_select(-1, kept_dims), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(teacher_own.logits, teacher_masked.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss_compacted, loss_masked, atol=1e-5, rtol=1e-5)
    assert loss_masked > 0


def test_a_refresh_shares_the_backbone_again_and_the_next_point_copies_it_again(tiny_bert_dir):
    """Between pruning points the teacher may be refreshed from the (already compacted) student:
    the new teacher shares the student's backbone, the old copy goes, and Tr writes the student's
    dims again (its output cut to them: the identity, same values). The next point copies anew."""
    from aptune.apt.teacher import apply_transform

    model, batch, spec, cb = _student_with_teacher(_bert, tiny_bert_dir)
    tr = cb._new_transform(model)
    _perturb([tr.lora_B], 2, 0.05)

    def prune_to(keep: float, seed: int) -> None:
        _use_masks(cb, random_binary_masks(model, spec, keep, torch.Generator().manual_seed(seed)))

    quiet = SimpleNamespace(unwrapped_model=model, step=30, say=lambda line: None)
    prune_to(0.6, 4)
    cb._shrink_student(quiet, {})
    assert cb.distillation.teacher.backbone is not None and tr in cb.pruner.hidden_readers
    d_s, d_t = tr.in_features, tr.out_features
    assert d_s < d_t
    h = torch.randn(2, 5, d_s, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        before = apply_transform(tr, h)  # (2, 5, d_t)
    rows = cb.distillation.student_dims_in_teacher(cb.pruner.structure.hidden)
    old_b = tr.lora_B

    survivors = cb._transform_follows_student({})
    cb.distillation.snapshot(model, 0.7)
    assert cb.distillation.teacher.backbone is None
    assert tr in cb.pruner.hidden_followers and tr not in cb.pruner.hidden_readers
    assert torch.equal(tr.weight, torch.eye(d_s))
    root, select = survivors[tr.lora_B]
    assert root is old_b and torch.equal(select(old_b.detach()), tr.lora_B.detach())
    with torch.no_grad():
        torch.testing.assert_close(apply_transform(tr, h), before.index_select(-1, rows), atol=0, rtol=0)
        # the new teacher is the student as it stands
        out, loss, teacher = _losses(cb, model, spec, batch, seed=3)
    torch.testing.assert_close(teacher.logits, out.logits, atol=1e-5, rtol=1e-5)

    _perturb([m.lora_B for _, m in lora_modules(model)], 9)  # the student moves on
    prune_to(0.7, 6)
    with torch.no_grad():
        _, loss_masked, teacher_masked = _losses(cb, model, spec, batch, seed=3)
    cb._shrink_student(quiet, {})
    assert cb.distillation.teacher.backbone is not None and tr in cb.pruner.hidden_readers
    with torch.no_grad():
        _, loss_compacted, teacher_own = _losses(cb, model, spec, batch, seed=3)
    torch.testing.assert_close(teacher_own.logits, teacher_masked.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_compacted, loss_masked, atol=1e-5, rtol=1e-5)


def test_apt_run_shrinks_the_student_and_reports_step_times_by_phase(tiny_bert_dir, tiny_data_dir, tmp_path,
                                                                     capsys):
    """A real run: the student is compacted at the last pruning point (with --compact-every-point
    at every point); metrics.json reports the seconds per step of every phase; with
    --no-shrink-student nothing is compacted until a teacher refresh or the end of distillation."""
    from aptune.config import TrainConfig
    from aptune.pipeline import run_training

    def run(name, **extra):
        cfg = TrainConfig(model=str(tiny_bert_dir), data_dir=str(tiny_data_dir), task="sst2", method="apt",
                          output_dir=str(tmp_path / name), epochs=7, batch_size=16, eval_every=5, lr=2e-3,
                          teacher_gate=False, **extra)  # a chance-level tiny model: a teacher all the same
        return run_training(cfg, show_progress=False)

    shrunk = run("shrunk")
    phases = shrunk["seconds_per_step_by_phase"]
    assert list(phases) == ["before_pruning", "pruning", "distilling_pruned", "tuning_pruned"]
    assert sum(p["steps"] for p in phases.values()) == shrunk["steps"]
    assert all(p["seconds_per_step"] > 0 for p in phases.values())
    assert shrunk["method_settings"]["shrink_student"] is True
    assert shrunk["method_settings"]["compact_every_point"] is False
    assert shrunk["size_target"]["met"] and shrunk["size_target"]["kept"] <= 0.4 + 1e-9
    assert capsys.readouterr().out.count("the student is compacted to its masks") == 1  # at p_K
    every = run("every", compact_every_point=True)
    # compacted at every pruning point that cut something, not only at the last
    assert capsys.readouterr().out.count("the student is compacted to its masks") >= 2
    assert every["size_target"]["met"] and every["size_target"]["kept"] <= 0.4 + 1e-9
    masked = run("masked", shrink_student=False)
    assert masked["method_settings"]["shrink_student"] is False
    assert "the student is compacted" not in capsys.readouterr().out
    # All reach the size. Their later pruning decisions may differ: the masked and the compacted
    # student agree only to rounding (sums over different terms), which AdamW's first steps on
    # fresh state can amplify, so the runs' salience drifts apart after the first compaction.
    assert masked["size_target"]["met"] and masked["size_target"]["kept"] <= 0.4 + 1e-9


def test_the_teachers_copy_never_runs_the_student(tiny_bert_dir):
    """Accelerate's mixed precision patches `model.forward` with a closure over the model; a copy
    that kept it would run the student. The copy runs its own class forward on its own tensors."""
    model = load_classifier(str(tiny_bert_dir), 2).eval()
    spec = get_spec(model)
    cfg = APTConfig(sparsity=0.6, use_kurtosis=False)
    cfg.validate()
    cb = attach_apt(model, spec, cfg)
    original = model.forward
    model._original_forward = original
    model.forward = lambda *args, **kwargs: original(*args, **kwargs)  # as accelerate's autocast wrap
    twin = cb.pruner.frozen_copy(model)
    assert twin.forward.__self__ is twin and "forward" not in twin.__dict__
    ids = torch.randint(5, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = twin(input_ids=ids).logits
        for _, m in lora_modules(model):
            m.lora_B.add_(1.0)  # the student moves; the copy must not
        assert torch.equal(twin(input_ids=ids).logits, before)
        assert not torch.allclose(model(input_ids=ids).logits, before)


@pytest.mark.parametrize("build", [_bert, _t5], ids=["bert", "t5-gated"])
def test_teacher_targets_taken_before_the_student_give_the_same_loss(build, tiny_bert_dir):
    """APT's step runs the teacher before the student's forward (a lower peak memory) and keeps
    only its logits and the sampled layers: the loss and its gradients are those of the teacher
    run inside the loss, layer draws included."""
    model, batch, spec, cb = _student_with_teacher(build, tiny_bert_dir)
    cb._new_transform(model)
    _perturb([m.lora_B for _, m in lora_modules(model)], 3)
    masks, salience = cb.pruner.masks, cb.pruner.salience
    alive = masks.alive_layers(spec.stacks(model))
    trainable = [p for p in model.parameters() if p.requires_grad] + cb.distillation.trainable()

    def loss_and_grads(early: bool):
        cb.distillation.generator.manual_seed(11)
        targets = cb.distillation.targets(model, batch, masks, salience, spec) if early else None
        if early:
            stacks = len(spec.stacks(model))
            assert len(targets.hidden) == stacks and len(targets.picks) == stacks
            for hidden, picks in zip(targets.hidden, targets.picks):
                assert set(hidden) == set(picks)  # only the sampled layers are kept
            assert not hasattr(targets.prediction, "hidden_states")
        out = model(**batch, output_hidden_states=True)
        loss = cb.distillation.loss(model, batch, out, masks, salience, alive, spec, targets)
        grads = torch.autograd.grad(loss, trainable, allow_unused=True)
        return loss.detach(), grads

    late_loss, late_grads = loss_and_grads(early=False)
    early_loss, early_grads = loss_and_grads(early=True)
    assert late_loss > 0 and torch.equal(early_loss, late_loss)
    for a, b in zip(early_grads, late_grads):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))



@pytest.mark.parametrize("shrink", [False, True], ids=["shared-backbone", "own-copy"])
def test_a_bfloat16_teacher_gives_model_dtype_targets_close_to_the_exact_ones(tiny_bert_dir, shrink):
    """teacher_precision: bfloat16 runs the teacher's forward under autocast, on the shared
    backbone as on its own copy; no weight changes dtype, its targets come back in the model's
    dtype within bfloat16 rounding of the exact teacher's, and the loss with them stays close."""
    def targets_and_loss(precision: str):
        model, batch, spec, cb = _student_with_teacher(_bert, tiny_bert_dir)
        cb.cfg.teacher_precision = precision
        cb._new_transform(model)
        _use_masks(cb, random_binary_masks(model, spec, 0.5, torch.Generator().manual_seed(4)))
        if shrink:
            cb._shrink_student(SimpleNamespace(unwrapped_model=model, step=30, say=lambda _: None), {})
        masks = cb.pruner.masks
        cb.distillation.generator.manual_seed(3)
        targets = cb.distillation.targets(model, batch, masks, cb.pruner.salience, spec)
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
            loss = cb.distillation.loss(model, batch, out, masks, cb.pruner.salience,
                                        masks.alive_layers(spec.stacks(model)), spec, targets)
        teacher = cb.distillation.teacher
        weights = teacher.backbone.parameters() if shrink else teacher.state.values()
        assert {p.dtype for p in [*weights, *model.parameters()]} == {torch.float32}
        return targets, loss

    exact, exact_loss = targets_and_loss("model")
    half, half_loss = targets_and_loss("bfloat16")
    assert half.prediction.logits.dtype == torch.float32
    torch.testing.assert_close(half.prediction.logits, exact.prediction.logits, atol=5e-2, rtol=5e-2)
    assert not torch.equal(half.prediction.logits, exact.prediction.logits)  # it did run in bfloat16
    for h_half, h_exact in zip(half.hidden, exact.hidden):
        assert h_half.keys() == h_exact.keys()
        for i in h_half:
            assert h_half[i].dtype == torch.float32
            torch.testing.assert_close(h_half[i], h_exact[i], atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(half_loss, exact_loss, atol=0, rtol=5e-2)


def test_the_half_precision_teachers_bucket_padding_leaves_the_real_positions_as_they_were(tiny_bert_dir):
    """padded_to_bucket right-pads an encoder batch to a multiple of 16 with masked tokens: the
    real positions' hidden states and the logits are those of the unpadded batch (exact
    arithmetic here); encoder-decoder batches and lengths on a multiple are left alone."""
    from aptune.apt.teacher import BUCKET, padded_to_bucket

    model, batch = _bert(tiny_bert_dir)
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    padded, length = padded_to_bucket(batch)
    assert length == 12 and padded["input_ids"].shape[1] == BUCKET
    assert padded["attention_mask"][:, 12:].sum() == 0 and torch.equal(padded["labels"], batch["labels"])
    with torch.no_grad():
        plain = model(**inputs, output_hidden_states=True)
        bucketed = model(**{k: v for k, v in padded.items() if k != "labels"}, output_hidden_states=True)
    torch.testing.assert_close(bucketed.logits, plain.logits, atol=1e-5, rtol=1e-5)
    for h_b, h_p in zip(bucketed.hidden_states, plain.hidden_states):
        torch.testing.assert_close(h_b[:, :length], h_p, atol=1e-5, rtol=1e-5)
    assert padded_to_bucket({**batch, "decoder_input_ids": batch["input_ids"]})[1] is None
    full = {k: v[:, :8].repeat(1, 2) if v.ndim > 1 else v for k, v in batch.items()}  # 16 tokens
    assert padded_to_bucket(full)[1] is None


def test_a_bfloat16_teachers_start_and_end_logits_come_back_at_the_batch_length(tiny_bert_dir):
    """On QA the per-token start and end logits of the padded teacher are cut to the batch's
    length (13 tokens, run as 16), in the model's dtype, near the exact teacher's."""
    torch.manual_seed(0)
    model = load_classifier(str(tiny_bert_dir), 2, head="question-answering").eval()
    spec = get_spec(model)
    cfg = APTConfig(sparsity=0.6, use_kurtosis=False, lambda_pred=0.1)
    cfg.validate()
    cb = attach_apt(model, spec, cfg)
    cb.distillation.snapshot(model, 0.5)
    ids = torch.randint(5, model.config.vocab_size, (3, 13), generator=torch.Generator().manual_seed(2))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "start_positions": torch.tensor([0, 3, 5]), "end_positions": torch.tensor([0, 4, 7])}
    found = {}
    for precision in ("model", "bfloat16"):
        cb.cfg.teacher_precision = precision
        cb.distillation.generator.manual_seed(3)
        found[precision] = cb.distillation.targets(model, batch, cb.pruner.masks, cb.pruner.salience, spec)
    for name in ("start_logits", "end_logits"):
        exact, half = (getattr(found[p].prediction, name) for p in ("model", "bfloat16"))
        assert half.shape == exact.shape == (3, 13) and half.dtype == torch.float32
        torch.testing.assert_close(half, exact, atol=5e-2, rtol=5e-2)
    assert all(h.shape[1] == 13 for h in found["bfloat16"].hidden[0].values())


def test_a_snapshots_compaction_and_optimizer_rebuild_leave_training_on_its_course(tiny_bert_dir):
    """A teacher snapshot compacts the student and rebuilds AdamW (state carried over). Twenty
    steps later the compacted run's loss, and the salience EMA of the blocks it kept, are the
    masked run's to rounding: a snapshot moves a run only through the sums' rounding (which a long
    run can still amplify into different later pruning decisions)."""
    from aptune.train.optim import build_optimizer, rebuild_optimizer

    def build():
        model, batch, spec, cb = _apt_student(_bert, tiny_bert_dir)
        _use_masks(cb, random_binary_masks(model, spec, 0.6, torch.Generator().manual_seed(4)))
        cb.pruner.salience.active = True
        opt = build_optimizer(model, 1e-3, 0.01)
        for _ in range(3):  # AdamW state and a salience EMA to carry over
            _train_step(model, cb, opt, batch)
        return model, cb, opt, batch

    masked, cb_m, opt_m, batch = build()
    compacted, cb_c, opt_c, _ = build()
    # What a snapshot does to the student, through the callback's own steps
    rebuilt = {}
    trainer = SimpleNamespace(unwrapped_model=compacted, rebuild_optimizer=lambda survivors, extra_params: (
        rebuilt.setdefault("opt", rebuild_optimizer(opt_c, compacted, 0.01, survivors, extra_params))))
    cb_c._rebuild_optimizer(trainer, cb_c._compact(compacted, {}))
    opt_c = rebuilt["opt"]
    kept = cb_c.pruner.structure
    assert sum(map(len, kept.heads)) < sum(m.numel() for m in cb_m.pruner.masks.head)  # something was cut
    losses = [(_train_step(masked, cb_m, opt_m, batch), _train_step(compacted, cb_c, opt_c, batch))
              for _ in range(20)]
    (first, _), (loss_m, loss_c) = losses[0], losses[-1]
    assert loss_m < 0.99 * first  # the runs moved
    torch.testing.assert_close(loss_c, loss_m, atol=1e-6, rtol=1e-5)
    ema_m, ema_c = cb_m.pruner.salience.ema, cb_c.pruner.salience.ema
    pick = lambda e, idx: e[torch.as_tensor(idx, dtype=torch.long)]  # noqa: E731
    for kind in ("head", "neuron"):
        for e_m, e_c, idx in zip(ema_m[kind], ema_c[kind], getattr(kept, kind + "s")):
            torch.testing.assert_close(e_c, pick(e_m, idx), atol=1e-6, rtol=1e-4)
    hidden_m = pick(ema_m["hidden"][0], kept.hidden)
    torch.testing.assert_close(ema_c["hidden"][0], hidden_m, atol=1e-6, rtol=1e-4)


def _train_step(model, cb, opt, batch) -> torch.Tensor:
    """One step as APT's loop takes it: forward, backward, the salience EMA, AdamW."""
    out = model(**batch)
    out.loss.backward()
    salience = cb.pruner.salience
    salience.update_ema(salience.step_scores(None, alive=cb.pruner.masks.alive()))
    opt.step()
    opt.zero_grad()
    return out.loss.detach()
