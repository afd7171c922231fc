"""Two CPU processes (torchrun, gloo) take identical pruning decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--no-distill",), ("--group-by-length",)],
                         ids=["distill", "no-distill", "group-by-length"])
def test_two_process_apt_run_has_identical_masks(tiny_roberta_dir, tiny_data_dir, tmp_path, extra):
    """Without distillation APT compacts the DDP-wrapped model at every pruning point; with
    batches grouped by length both processes draw the same permutation and take their shards."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "APTUNE_DATA_DIR": str(tiny_data_dir)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29561", "-m", "aptune.cli", "train", "--task", "sst2",
           "--method", "apt", "--model", str(tiny_roberta_dir), "--output-dir", str(out),
           "--epochs", "7", "--batch-size", "8", "--eval-every", "30", "--lr", "2e-3", "--quiet", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hardware"]["num_processes"] == 2
    checks = metrics["method_settings"]["process_consistency"]
    assert len(checks) >= 3  # one per pruning point
    for check in checks:
        first, second = check["fingerprints"]
        assert first == second, check
    assert metrics["params"]["kept_ratio"] <= 0.40


@pytest.mark.slow
def test_two_process_apt_run_killed_and_resumed_matches(tiny_roberta_dir, tiny_data_dir, tmp_path):
    """Both processes killed (SIGKILL) after step 20, before the last pruning point (27), and the
    run resumed under torchrun: the later pruning point agrees on both processes, and the run
    ends as the uninterrupted 2-process run does, bit for bit."""
    from safetensors.numpy import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "APTUNE_DATA_DIR": str(tiny_data_dir)}
    env.pop("APTUNE_FAULT_AT_STEP", None)

    def torchrun(*args, fault=None):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", "29562", "-m", "aptune.cli", "train", *map(str, args), "--quiet"]
        return subprocess.run(cmd, env={**env, **({"APTUNE_FAULT_AT_STEP": fault} if fault else {})},
                              capture_output=True, text=True, timeout=300)

    settings = ("--task", "sst2", "--method", "apt", "--model", tiny_roberta_dir, "--epochs", "7",
                "--batch-size", "8", "--eval-every", "10", "--lr", "2e-3", "--checkpoint-every", "5",
                "--pruning-end-frac", "0.3", "--distill-end-frac", "0.5")  # the steps named above
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert torchrun(*settings, "--output-dir", reference).returncode == 0
    assert torchrun(*settings, "--output-dir", out, fault="20:KILL").returncode != 0
    state = json.loads((tmp_path / ".run.partial-run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 20 and state["num_processes"] == 2 and len(state["rng_other_ranks"]) == 1
    # a checkpoint of 2 processes is not resumed by 1
    one = subprocess.run([sys.executable, "-m", "aptune", "train", "--resume", str(out), "--quiet"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 2 and "written by 2 process(es), this run has 1" in one.stderr
    resumed = torchrun("--resume", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint at step 20" in resumed.stdout
    before, after = (json.loads((run / "metrics.json").read_text()) for run in (reference, out))
    checks = after["method_settings"]["process_consistency"]
    assert checks == before["method_settings"]["process_consistency"] and checks[-1]["point"] == 3
    assert len(set(checks[-1]["fingerprints"])) == 1  # the point after the restart agrees too
    assert [r["value"] for r in after["history"]] == [r["value"] for r in before["history"]]
    expected, got = (load_file(str(run / "model" / "model.safetensors")) for run in (reference, out))
    assert expected.keys() == got.keys() and all((expected[k] == got[k]).all() for k in expected)


@pytest.mark.slow
def test_two_processes_choose_one_null_threshold_on_held_out_questions(tiny_bert_dir, tiny_data_dir,
                                                                       tmp_path):
    """SQuAD v2 with the threshold chosen on held-out training questions: each process scores
    them and the main process's choice is broadcast, so both select and save alike."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "APTUNE_DATA_DIR": str(tiny_data_dir)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29563", "-m", "aptune.cli", "train", "--task", "squad_v2",
           "--method", "ft", "--model", str(tiny_bert_dir), "--output-dir", str(out),
           "--epochs", "2", "--batch-size", "8", "--eval-every", "3", "--lr", "5e-3", "--max-length", "80",
           "--doc-stride", "8", "--max-train-samples", "30", "--null-threshold-from", "held-out",
           "--held-out-questions", "8", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hardware"]["num_processes"] == 2
    chosen = metrics["eval"]["null_score_threshold"]
    assert f"null_score_threshold: {chosen}" in (out / "config.yaml").read_text()
