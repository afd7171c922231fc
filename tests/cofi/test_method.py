"""The cofi and cofi-lora methods end to end on tiny models, and what cofi-lora may train."""

from __future__ import annotations

import json

import pytest
import torch

from aptune.arch import get_spec
from aptune.config import TrainConfig
from aptune.export import load_pruned
from aptune.cofi.callback import CoFiSchedule
from aptune.methods.cofi import CoFiLoRA
from aptune.train.events import Callback
from tests.helpers import invoke, read_log

pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")

STAGES = ["--cofi-pruning-epochs", "4", "--cofi-ft-epochs", "1", "--cofi-prepruning-steps", "3",
          "--lagrangian-warmup-epochs", "1", "--reg-lr", "0.2", "--eval-every", "4",
          "--batch-size", "16", "--allow-untrained-prerequisite", "--on-size-miss", "warn"]


@pytest.fixture(scope="module")
def teacher_run(tiny_roberta_dir, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cofi") / "ft"
    invoke("train", "--method", "ft", "--model", tiny_roberta_dir, "--data-dir", tiny_data_dir,
           "--output-dir", out, "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--quiet")
    return out


def test_schedule_decays_per_stage_then_is_constant():
    s = CoFiSchedule(lr=1.0, prepruning=10, pruning_end=50, ft_lr=0.1)
    assert s(0) == 1.0 and s(5) == pytest.approx(0.9)  # decay over the whole pruning stage
    assert s(10) == 1.0 and s(30) == pytest.approx(0.5)  # re-created at pruning start
    assert s(50) == s(99) == 0.1


@pytest.mark.parametrize("method", ["cofi", "cofi-lora"])
def test_cofi_methods_end_compacted_and_reloadable(method, teacher_run, tiny_roberta_dir,
                                                   tiny_data_dir, tmp_path):
    out = tmp_path / method
    text = invoke("train", "--method", method, "--cofi-teacher-path", teacher_run, "--model",
                  tiny_roberta_dir, "--data-dir", tiny_data_dir, "--output-dir", out, *STAGES,
                  "--quiet").stdout
    metrics = json.loads((out / "metrics.json").read_text())
    settings = metrics["method_settings"]
    assert "CoFi: compacted" in text and "expected sparsity" in text
    assert settings["stages"]["pruning_end"] < metrics["steps"]
    assert settings["sparsity_history"] and settings["compaction"]["kept_hidden"] > 0
    assert 0 <= settings["compaction"]["expected_sparsity_at_pruning_end"] <= 1
    assert "CoFi: pruning stage ended at expected sparsity" in text
    teacher = json.loads((teacher_run / "metrics.json").read_text())
    assert metrics["seconds_before_training"] > 0
    assert metrics["seconds_before_training"] <= teacher["train_seconds"] + 1e-6
    log = read_log(out)
    assert all(r["total_train_seconds"] >= metrics["seconds_before_training"] for r in log)
    # TTA counts pruning-stage evaluations only once ŝ reaches the target, then every later one
    stages = settings["stages"]
    for r in log:
        if r["step"] >= stages["pruning_end"]:
            assert r["at_final_size"]
        elif r["step"] <= stages["prepruning_end"]:
            assert not r["at_final_size"]
    reached = {h["step"]: h["expected_sparsity"] >= 0.6 for h in settings["sparsity_history"]}
    assert all(r["at_final_size"] == reached[r["step"]] for r in log if r["step"] in reached)
    model = load_pruned(out / "model")
    reloaded = invoke("eval", "--model-dir", out, "--task", "sst2", "--data-dir", tiny_data_dir)
    assert f"accuracy {metrics['eval']['accuracy']:.4f}" in reloaded.stdout
    assert sum(p.numel() for p in model.parameters()) == metrics["params"]["total"]


def test_cofi_trains_its_teacher_inline(tiny_bert_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "inline"
    invoke("train", "--method", "cofi", "--model", tiny_bert_dir, "--data-dir", tiny_data_dir,
           "--output-dir", out, "--cofi-teacher-epochs", "1", *STAGES, "--quiet")
    assert (out / "base-ft" / "metrics.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method_settings"]["teacher"]["run"].endswith("base-ft")


class _Probe(Callback):
    """Records parameters and optimizer state a few steps into the pruning stage."""

    def __init__(self, method, at: int) -> None:
        self.method, self.at, self.seen = method, at, None

    def _gates(self) -> dict:
        gates, control = self.method.callback.gates, self.method.callback.control
        state = [*gates.state_dict().items(), *control.state_dict().items()]
        return {k: v.detach().clone() for k, v in state}

    def on_train_begin(self, trainer) -> None:  # after CoFi's own: the gates exist now
        self.gates_at_start = self._gates()

    def after_step(self, trainer) -> None:
        if trainer.step == self.at:
            self.gates_then = self._gates()
            opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
            with_state = {id(p) for p, s in opt.state.items() if s}
            self.seen = ({n: p.detach().clone() for n, p in trainer.unwrapped_model.named_parameters()},
                         {n for n, p in trainer.unwrapped_model.named_parameters() if id(p) in with_state})


def test_cofi_lora_changes_only_lora_and_head(tiny_roberta_dir, tiny_data_dir):
    from accelerate import Accelerator

    from aptune.models import load_classifier, load_tokenizer
    from aptune.tasks import get_task
    from aptune.train.data import encode, make_loader
    from aptune.train.loop import LoopConfig, Trainer

    task = get_task("sst2")
    tok = load_tokenizer(str(tiny_roberta_dir))
    split = task.load("train", tiny_data_dir, 64, 0, {})
    ds = encode(task, split.examples, tok, 32, load_classifier(str(tiny_roberta_dir), 2).config)
    loader = make_loader(ds, tok, 16, shuffle=True, seed=0)
    cfg = TrainConfig(method="cofi-lora", epochs=1, lr=2e-4, cofi_ft_lr=2e-5, cofi_pruning_epochs=3,
                      cofi_ft_epochs=0, cofi_prepruning_steps=2, lagrangian_warmup_epochs=1)
    torch.manual_seed(0)
    model = load_classifier(str(tiny_roberta_dir), 2)
    spec = get_spec(model)
    method = CoFiLoRA()
    method._teacher = load_classifier(str(tiny_roberta_dir), 2).eval().requires_grad_(False)
    model = method.prepare(model, spec, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = _Probe(method, at=5)
    trainer = Trainer(model, task, loader, loader, LoopConfig(epochs=3, lr=1e-2, batch_size=16,
                      eval_every=100), Accelerator(cpu=True),
                      callbacks=[*method.callbacks(model, spec, cfg), probe], show_progress=False)
    trainer.train()
    # the optimizer was rebuilt (at the start and when pruning starts); Accelerate keeps only the
    # current one, so old moments are freed (not charged to the training memory)
    assert trainer.accelerator._optimizers == [trainer.optimizer]
    after, with_state = probe.seen
    allowed = ("lora_", "classifier.")
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(any(a in n for a in allowed) for n in changed), changed
    assert with_state and all(any(a in n for a in allowed) for n in with_state), with_state
    # The L0 log-alphas and the Lagrange multipliers train too (in their own optimizers).
    moved = {k for k, v in probe.gates_at_start.items() if not torch.equal(v, probe.gates_then[k])}
    assert {"lambda_1", "lambda_2"} <= moved and any(k.startswith("log_alpha") for k in moved), moved


def test_cofi_says_that_it_ignores_epochs():
    from aptune.config import TrainConfig
    from aptune.methods import get_method
    from aptune.pipeline import ignored_epochs_note

    cfg = TrainConfig(method="cofi", epochs=5, cofi_pruning_epochs=3, cofi_ft_epochs=2)
    assert ignored_epochs_note(cfg, get_method("cofi")) is None  # 5 = 3 + 2: nothing ignored
    cfg = TrainConfig(method="cofi", epochs=7, cofi_pruning_epochs=3, cofi_ft_epochs=2)
    assert "--epochs 7 is ignored: cofi trains 5 epochs" in ignored_epochs_note(cfg, get_method("cofi"))
    assert ignored_epochs_note(TrainConfig(method="cofi"), get_method("cofi")) is None  # the default
    assert ignored_epochs_note(TrainConfig(method="apt", epochs=7), get_method("apt")) is None


def test_cofi_refuses_a_plan_that_cannot_reach_its_size():
    """The issue's case: 1,000 SST-2 sentences at batch 32 (32 steps per epoch), a 4-epoch pruning
    stage (128 steps), 100 pre-pruning steps and a 2-epoch target ramp (64 steps): the target would
    stop at 0.6 * 28 / 64 = 0.26. Refused before anything trains, naming the steps it needs."""
    from aptune.errors import AptuneError
    from aptune.methods import get_method

    cfg = TrainConfig(method="cofi", sparsity=0.6, cofi_pruning_epochs=4, cofi_ft_epochs=2,
                      lagrangian_warmup_epochs=2)
    with pytest.raises(AptuneError) as refused:
        get_method("cofi").check_plan(cfg, 32)
    assert "its pruning stage ends at step 128" in str(refused.value)
    assert "would stop at a target of 0.26" in str(refused.value)
    assert "at least 164 steps (--cofi-pruning-epochs 5.2 or more)" in refused.value.fix
    get_method("cofi").check_plan(TrainConfig(method="cofi", cofi_pruning_epochs=6, cofi_ft_epochs=2,
                                              lagrangian_warmup_epochs=2), 32)  # 100 + 64 <= 192
    get_method("apt").check_plan(cfg, 1)  # other methods check their plans elsewhere
