"""Two CPU processes (torchrun, gloo) take identical pruning decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--no-distill",)], ids=["distill", "no-distill"])
def test_two_process_apt_run_has_identical_masks(tiny_roberta_dir, tiny_data_dir, tmp_path, extra):
    """Without distillation APT compacts the DDP-wrapped model at every pruning point."""
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
