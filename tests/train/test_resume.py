"""Checkpoints and --resume: a run killed (SIGKILL) or interrupted (SIGINT, SIGTERM) continues
from its last checkpoint and ends exactly where the uninterrupted run ends: the same evaluations
in log.jsonl and bit-identical final weights (one thread, CPU). Runs go through `python -m aptune`
in a subprocess so that a kill is a real kill; APTUNE_FAULT_AT_STEP picks the step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tests.helpers import RUNNER, read_log

pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")


def aptune(*args, fault: str | None = None):
    """`aptune ARGS`: in a subprocess when a fault is to kill it (a kill must be a real kill),
    otherwise in this process, on one thread as the subprocesses run (a fresh interpreter spends
    seconds on its imports). Either way a CompletedProcess-like result."""
    if fault is None:
        return in_process(*args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "APTUNE_FAULT_AT_STEP": fault}
    return subprocess.run([sys.executable, "-m", "aptune", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def in_process(*args) -> subprocess.CompletedProcess:
    from aptune.cli import app

    result = RUNNER.invoke(app, [str(a) for a in args])  # one thread: the module's one_thread fixture
    stderr = result.stderr + (f"\n{result.exception!r}" if result.exit_code not in (0, 2) else "")
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


def train(out: Path, model: Path, data: Path, method: str, *extra, fault: str | None = None):
    return aptune("train", "--task", "sst2", "--method", method, "--model", model, "--data-dir", data,
                  "--output-dir", out, "--epochs", "3", "--batch-size", "16", "--eval-every", "5",
                  "--lr", "2e-3", "--quiet", *extra, fault=fault)


def weights(run: Path) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


def evaluations(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["value"], r["samples_seen"]) for r in read_log(run)]


def unfinished(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial-run")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert_dir, tiny_data_dir):
    """The uninterrupted runs: 200 rows / 16 = 13 steps per epoch, 39 steps, evaluations every 5."""
    runs = {}
    for method in ("ft", "lora"):
        out = tmp_path_factory.mktemp("reference") / method
        done = train(out, tiny_bert_dir, tiny_data_dir, method)
        assert done.returncode == 0, done.stderr
        runs[method] = out
    return runs


# (method, fault, checkpoint flags): killed mid-epoch after a checkpoint at an evaluation; killed
# right after an epoch boundary with checkpoints every 4 steps; interrupted by SIGINT and SIGTERM.
CASES = [("ft", "17:KILL", ()), ("lora", "14:KILL", ("--checkpoint-every", "4")),
         ("lora", "22:INT", ()), ("ft", "9:TERM", ())]


@pytest.mark.parametrize("method, fault, extra", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_stopped_run_resumes_exactly(tmp_path, tiny_bert_dir, tiny_data_dir, reference, method, fault,
                                       extra):
    out = tmp_path / "run"
    stopped = train(out, tiny_bert_dir, tiny_data_dir, method, *extra, fault=fault)
    assert stopped.returncode != 0
    assert not out.exists() and (unfinished(out) / "checkpoint" / "state.json").is_file()
    step = json.loads((unfinished(out) / "checkpoint" / "state.json").read_text())["step"]
    if fault.endswith("KILL"):  # the last checkpoint before the kill
        every = int(extra[1]) if extra else 5
        assert step == int(fault.split(":")[0]) // every * every
    else:  # a signal: the step in progress finishes, then a checkpoint and the resume command
        assert step == int(fault.split(":")[0]) + 1
        assert f"interrupted after step {step}" in stopped.stderr
        assert f"continue with: aptune train --resume {out}" in stopped.stderr
    resumed = aptune("train", "--resume", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint at step {step}" in resumed.stdout
    assert evaluations(out) == evaluations(reference[method])
    expected, got = weights(reference[method]), weights(out)
    assert expected.keys() == got.keys()
    assert all((expected[k] == got[k]).all() for k in expected), "weights differ after resuming"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 39 and not unfinished(out).exists()
    assert not (out / "checkpoint").exists()  # a finished run carries no checkpoint


def test_resume_guards(tmp_path, tiny_bert_dir, tiny_data_dir):
    """Only the kill needs a real process; the rest runs in this one (`aptune` without a fault)."""
    out = tmp_path / "run"
    assert train(out, tiny_bert_dir, tiny_data_dir, "ft", fault="12:KILL").returncode != 0
    out2 = tmp_path / "run2"  # the same checkpoint, damaged below
    shutil.copytree(unfinished(out), unfinished(out2))
    # the same run, other settings: refused, naming them
    changed = aptune("train", "--resume", out, "--lr", "0.5", "--quiet")
    assert changed.returncode == 2 and "these settings differ: lr (0.002 in the checkpoint, 0.5 now)" \
        in changed.stderr
    # a new run into the same folder does not silently throw the checkpoint away
    fresh = train(out, tiny_bert_dir, tiny_data_dir, "ft")
    assert fresh.returncode == 2 and "has an unfinished run (checkpoint at step 10)" in fresh.stderr
    assert f"aptune train --resume {out}" in " ".join(fresh.stderr.split())
    assert train(out, tiny_bert_dir, tiny_data_dir, "ft", "--overwrite").returncode == 0
    nothing = aptune("train", "--resume", tmp_path / "never-ran", "--quiet")
    assert nothing.returncode == 2 and "holds no checkpoint" in nothing.stderr
    # a damaged checkpoint is one clear error
    tensors = unfinished(out2) / "checkpoint" / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:1000])
    damaged = aptune("train", "--resume", out2, "--quiet")
    assert damaged.returncode == 2 and "is damaged" in damaged.stderr and "Traceback" not in damaged.stderr


# The phases below are named by step: the schedule of aptune 0.1 (prune until 30 % of the run,
# distil until 50 %) puts all of them, a compaction after distillation included, into 91 steps.
SHORT_SCHEDULE = ("--pruning-end-frac", "0.3", "--distill-end-frac", "0.5")


def apt_run(out: Path, model: Path, data: Path, *extra, fault: str | None = None):
    """7 epochs of 13 steps: pruning points at 9, 18 (kept 0.475, ranks grow) and 27 (0.40);
    teacher snapshots at the window starts 5, 14 and 23 (each compacts the student); distillation
    over [19, 45); then fine-tuning at 0.1x the learning rate."""
    return aptune("train", "--task", "sst2", "--method", "apt", "--model", model, "--data-dir", data,
                  "--output-dir", out, "--epochs", "7", "--batch-size", "16", "--eval-every", "5",
                  "--lr", "2e-3", "--checkpoint-every", "1", "--quiet", *SHORT_SCHEDULE,
                  # the tiny model scores at chance: without the gate (the paper) it still has a
                  # teacher to save and restore
                  "--no-teacher-gate", *extra, fault=fault)


def test_apt_killed_in_every_phase_resumes_exactly(tmp_path, tiny_bert_dir, tiny_data_dir):
    """One APT run, killed (SIGKILL) and resumed six times: before any unit is pruned, resuming
    at a window start where the teacher is refreshed (14), inside a mask-decay window with soft
    masks and a live salience EMA (15), right after a rank growth at a pruning point (18),
    resuming at the step where distillation starts (19), during distillation with a teacher and
    Tr after the student was compacted below the teacher's own copy (34), and in the final
    fine-tuning (60). It ends where the uninterrupted run ends: the same evaluations, masks and
    ranks at every pruning point, and bit-identical weights."""
    from safetensors.torch import load_file as load_tensors

    reference = tmp_path / "reference"
    assert apt_run(reference, tiny_bert_dir, tiny_data_dir).returncode == 0
    out = tmp_path / "run"
    assert apt_run(out, tiny_bert_dir, tiny_data_dir, fault="14:KILL").returncode != 0
    for step in (15, 18, 19, 34, 60):
        resumed = aptune("train", "--resume", out, "--quiet", fault=f"{step}:KILL")
        assert resumed.returncode != 0 and "resumed from the checkpoint" in resumed.stdout, resumed.stderr
        folder = unfinished(out) / "checkpoint"
        state = json.loads((folder / "state.json").read_text())
        apt, tensors = state["callbacks"][0], load_tensors(str(folder / "tensors.safetensors"))
        assert state["step"] == step
        if step == 15:  # the kill landed where the test means it to
            masks = [v for k, v in tensors.items() if k.startswith("callback.0.masks.")]
            assert any(((m > 0) & (m < 1)).any() for m in masks) and apt["has_ema"]
        if step == 18:
            assert len(apt["rank_history"]) == 3 and apt["rank_history"][-1]["step"] == 18
        if step == 34:  # after the last pruning point: a compacted student, the teacher's own copy
            assert apt["transform_rank"] is not None and apt["teacher_metric"] is not None
            assert apt["teacher_backbone"] is not None and apt["teacher_backbone"] != apt["structure"]
            assert any(k.startswith("callback.0.teacher.") for k in tensors)
    # a checkpoint whose structure does not fit the model is one clear error, and harms nothing
    state_file = unfinished(out) / "checkpoint" / "state.json"
    good = state_file.read_text()
    bad = json.loads(good)
    bad["callbacks"][0]["structure"]["heads"][0] = [0, 1, 9]
    state_file.write_text(json.dumps(bad))
    refused = aptune("train", "--resume", out, "--quiet")
    assert refused.returncode == 2 and "pruned structure does not fit this model" in refused.stderr
    assert "Traceback" not in refused.stderr
    state_file.write_text(good)
    final = aptune("train", "--resume", out, "--quiet")
    assert final.returncode == 0, final.stderr
    assert "resumed from the checkpoint at step 60" in final.stdout
    assert evaluations(out) == evaluations(reference)
    expected, got = weights(reference), weights(out)
    assert expected.keys() == got.keys()
    assert all((expected[k] == got[k]).all() for k in expected), "weights differ after resuming"
    before, after = (json.loads((run / "metrics.json").read_text()) for run in (reference, out))
    for key in ("rank_history", "pruning_log", "teacher_log", "final_ranks", "structure"):
        assert after["method_settings"][key] == before["method_settings"][key], key
    assert after["method_settings"]["teacher_log"][0]["decision"] == "snapshot"  # the first one
    assert after["steps"] == 91 and after["selection"] == before["selection"]


def test_apt_without_distillation_resumes_after_a_compaction(tmp_path, tiny_bert_dir, tiny_data_dir):
    """Without a teacher APT compacts the student at every pruning point: killed right after the
    second one (18), the resumed run rebuilds the smaller shapes and the grown ranks first."""
    from aptune.structure import Structure

    reference, out = tmp_path / "reference", tmp_path / "run"
    assert apt_run(reference, tiny_bert_dir, tiny_data_dir, "--no-distill").returncode == 0
    assert apt_run(out, tiny_bert_dir, tiny_data_dir, "--no-distill", fault="18:KILL").returncode != 0
    apt = json.loads((unfinished(out) / "checkpoint" / "state.json").read_text())["callbacks"][0]
    structure = Structure.from_dict(apt["structure"])
    assert sum(map(len, structure.heads)) + sum(map(len, structure.neurons)) < 2 * 4 + 2 * 64
    assert max(apt["ranks"].values()) > 8
    assert aptune("train", "--resume", out, "--quiet").returncode == 0
    assert evaluations(out) == evaluations(reference)
    expected, got = weights(reference), weights(out)
    assert expected.keys() == got.keys() and all((expected[k] == got[k]).all() for k in expected)


COFI_STAGES = ("--cofi-pruning-epochs", "4", "--cofi-ft-epochs", "1", "--cofi-prepruning-steps", "3",
               "--lagrangian-warmup-epochs", "1", "--reg-lr", "0.2", "--eval-every", "4",
               "--cofi-teacher-epochs", "1", "--checkpoint-every", "1", "--allow-untrained-prerequisite",
               "--on-size-miss", "warn")


def test_cofi_killed_at_every_stage_boundary_resumes_exactly(tmp_path, tiny_bert_dir,
                                                            tiny_data_dir):
    """CoFi-LoRA with its FT teacher trained inline: killed at the end of pre-pruning (3: the
    resumed run starts the pruning stage), in the pruning stage with sampled gates and a moving λ
    (30), and right after compaction at the end of that stage (52 of 65: the resumed run rebuilds
    the compacted student with fresh LoRA). It reuses the finished teacher and ends as the
    uninterrupted run."""
    def cofi(out: Path, fault: str | None = None):
        return aptune("train", "--task", "sst2", "--method", "cofi-lora", "--model", tiny_bert_dir,
                      "--data-dir", tiny_data_dir, "--output-dir", out, "--batch-size", "16", "--quiet",
                      *COFI_STAGES, fault=fault)

    reference, out = tmp_path / "reference", tmp_path / "run"
    assert cofi(reference).returncode == 0
    assert cofi(out, fault="3:KILL").returncode != 0
    for step in (30, 52):
        resumed = aptune("train", "--resume", out, "--quiet", fault=f"{step}:KILL")
        assert resumed.returncode != 0 and "reusing its finished ft run" in resumed.stdout, resumed.stderr
        state = json.loads((unfinished(out) / "checkpoint" / "state.json").read_text())
        assert state["step"] == step and state["callbacks"][0]["compacted"] == (step == 52)
        assert step == 52 or state["callbacks"][0]["history"]  # the Lagrangian was at work
    assert aptune("train", "--resume", out, "--quiet").returncode == 0
    assert evaluations(out) == evaluations(reference)
    expected, got = weights(reference), weights(out)
    assert expected.keys() == got.keys() and all((expected[k] == got[k]).all() for k in expected)
    before, after = (json.loads((run / "metrics.json").read_text())["method_settings"]
                     for run in (reference, out))
    assert after["sparsity_history"] == before["sparsity_history"]
    assert after["compaction"] == before["compaction"]


def test_lora_prune_killed_after_mask_tuning_resumes_exactly(tmp_path, tiny_bert_dir, tiny_data_dir):
    """LoRA+Prune with its LoRA run inline: killed in the retraining (10 of 26); the resumed run
    reuses the base run and Mask Tuning's saved result instead of redoing them."""
    def lora_prune(out: Path, fault: str | None = None):
        return aptune("train", "--task", "sst2", "--method", "lora-prune", "--model", tiny_bert_dir,
                      "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "2", "--base-epochs",
                      "1", "--eval-every", "5", "--batch-size", "16", "--lr", "2e-3", "--checkpoint-every",
                      "2", "--quiet", "--allow-untrained-prerequisite", fault=fault)

    reference, out = tmp_path / "reference", tmp_path / "run"
    assert lora_prune(reference).returncode == 0
    assert lora_prune(out, fault="10:KILL").returncode != 0
    assert (unfinished(out) / "stages" / "mask-tuning" / "summary.json").is_file()
    # the LoRA run it prunes must be the one it started from
    base_metrics = unfinished(out) / "base-lora" / "metrics.json"
    original = base_metrics.read_text()
    changed = json.loads(original)
    changed["eval"]["accuracy"] += 0.25
    base_metrics.write_text(json.dumps(changed))
    refused = aptune("train", "--resume", out, "--quiet")
    assert refused.returncode == 2 and "changed after the checkpoint was written" in refused.stderr
    base_metrics.write_text(original)
    resumed = aptune("train", "--resume", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "reusing its finished lora run" in resumed.stdout
    assert "mask tuning: reusing the result" in resumed.stdout
    assert evaluations(out) == evaluations(reference)
    expected, got = weights(reference), weights(out)
    assert expected.keys() == got.keys() and all((expected[k] == got[k]).all() for k in expected)
    before, after = (json.loads((run / "metrics.json").read_text()) for run in (reference, out))
    tuned = [m["method_settings"]["mask_tuning"] for m in (before, after)]
    assert tuned[0]["kept_heads"] == tuned[1]["kept_heads"] and tuned[0]["budget"] == tuned[1]["budget"]
    assert not (out / "stages").exists() and not (out / "checkpoint").exists()


def test_two_runs_never_share_an_output_folder(tmp_path):
    from aptune.errors import AptuneError
    from aptune.train.run_dir import RunDir

    first = RunDir(tmp_path / "run")
    with pytest.raises(AptuneError, match="another aptune run is writing to"):
        RunDir(tmp_path / "run")
    assert (first.tmp).is_dir()  # the refused run touched nothing of the first one's
    first.abandon()
    second = RunDir(tmp_path / "run")  # released: free again
    second.finish({"kind": "test"})
    assert not (tmp_path / ".run.lock").exists()
    # a killed run's lock dies with its process
    other = str(tmp_path / "other")
    code = f"from aptune.train.run_dir import RunDir; RunDir({other!r}); import os; os._exit(0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    RunDir(tmp_path / "other", overwrite=True).abandon()


def test_every_method_resumes_on_one_process():
    from aptune.methods import METHODS

    assert all(m.resumable for m in METHODS.values())


def test_writing_a_checkpoint_is_left_out_of_the_peak_memory():
    import torch

    from aptune.train.memory import PeakMemoryMeter

    meter = PeakMemoryMeter(torch.device("cpu"))
    meter.start()
    with meter.excluded():
        big = torch.ones(64, 2**20)  # 256 MiB, touched: a checkpoint's serialised copies
        del big
    assert meter.peak_bytes() < 128 * 2**20  # the block is not in the training peak
    kept = torch.ones(64, 2**20)
    assert meter.peak_bytes() >= 200 * 2**20  # what happens outside it is
    del kept


def test_a_bench_job_stopped_mid_run_continues_or_restarts(tmp_path):
    import yaml

    from aptune.bench.runner import _continue_or_restart

    out = tmp_path / "ft"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"task": "sst2", "method": "ft", "lr": 2e-5, "epochs": 2}))
    assert _continue_or_restart(config, out) == []  # nothing stopped: a plain run
    state = unfinished(out) / "checkpoint" / "state.json"
    state.parent.mkdir(parents=True)
    saved = {"task": "sst2", "method": "ft", "lr": 2e-5, "epochs": 2.0, "seed": 128}
    state.write_text(json.dumps({"format": 1, "step": 10, "config": saved}))
    assert _continue_or_restart(config, out) == ["--resume", str(out)]
    config.write_text(yaml.safe_dump({"task": "sst2", "method": "ft", "lr": 1e-4, "epochs": 2}))
    assert _continue_or_restart(config, out) == ["--overwrite"]  # the suite changed: start over
    # a LoRA+Prune job whose LoRA run was retrained after its checkpoint starts over
    base = tmp_path / "lora"
    base.mkdir()
    (base / "metrics.json").write_text("{}")
    job = tmp_path / "lora-prune"
    state = unfinished(job) / "checkpoint" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"format": 1, "step": 10, "config": {"method": "lora-prune"},
                                 "prerequisite": {"run": str(base)}}))
    config.write_text(yaml.safe_dump({"method": "lora-prune"}))
    assert _continue_or_restart(config, job) == ["--resume", str(job)]
    os.utime(base / "metrics.json", (state.stat().st_mtime + 10,) * 2)
    assert _continue_or_restart(config, job) == ["--overwrite"]
